//! Where `remote` finds its server: a flag, else its environment variable (`VMATTEST_SERVER`,
//! `VMATTEST_TOKEN_FILE`, `VMATTEST_CA_CERT`; clap reads those), else the user's client file
//! `$XDG_CONFIG_HOME/vmattest/client.toml` (or the file `VMATTEST_CONFIG` names).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::args::ServerArgs;

/// A client file is a few lines; anything larger is refused unread.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    server: Option<String>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
}

/// The client file's path: `VMATTEST_CONFIG`, or the XDG default (which may not exist).
fn path() -> Option<(PathBuf, bool)> {
    if let Some(p) = std::env::var_os("VMATTEST_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(p), true));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some((base.join("vmattest/client.toml"), false))
}

fn load(path: &Path) -> anyhow::Result<ClientFile> {
    let bytes = vmattest_host::files::read_capped(path, MAX_CONFIG_BYTES, "client config")?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("{}: expected UTF-8 TOML", path.display()))?;
    let mut file: ClientFile =
        toml::from_str(text).with_context(|| format!("{}: client config", path.display()))?;
    // Relative paths in the file are relative to the file, not to wherever the user stands.
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [&mut file.token_file, &mut file.ca_cert]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(file)
}

/// Fills what the flags and environment left unset from the client file.
pub fn complete(mut conn: ServerArgs) -> anyhow::Result<ServerArgs> {
    if conn.server.is_some() && conn.token_file.is_some() && conn.ca_cert.is_some() {
        return Ok(conn);
    }
    let Some((path, named)) = path() else {
        return Ok(conn);
    };
    let file = match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(conn),
        _ => load(&path)?,
    };
    // A file's token belongs to the file's server: it is not sent to a server named elsewhere.
    let same_server = conn.server.is_none() || conn.server == file.server;
    conn.server = conn.server.or(file.server);
    if same_server {
        conn.token_file = conn.token_file.or(file.token_file);
        conn.ca_cert = conn.ca_cert.or(file.ca_cert);
    }
    Ok(conn)
}
