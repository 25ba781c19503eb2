//! The libvirt launch gate. libvirt runs every executable in `/etc/libvirt/hooks/qemu.d/` with
//! `NAME OP SUBOP EXTRA` and the domain XML on standard input; a non-zero exit at `prepare
//! begin` or `start begin` aborts the start and libvirt shows the hook's message. The gate
//! measures that XML as `config measure --libvirt` does and checks it against a reference
//! (here, or on the server), at both points. It never calls libvirt: libvirt holds the
//! domain's lock while it waits for the hook.

use std::fmt;
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vmattest_api::ConfigMismatch;
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::config::ConfigList;
use vmattest_sign::Signer;

use crate::launch::{LaunchError, server_check};
use crate::measurement::{self, MeasurementError, Packages};

/// Where libvirt looks for QEMU hooks; compiled into libvirt, for system and session daemons.
pub const HOOKS_DIR: &str = "/etc/libvirt/hooks/qemu.d";

/// The first lines of every script `install` writes; `uninstall` removes only such files.
const MARKER: &str = "# vmattest launch gate";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Measurement(#[from] MeasurementError),
    #[error("libvirt hook arguments: expected NAME OP SUBOP EXTRA, found {found:?}")]
    Args { found: Vec<String> },
    #[error("launch refused: domain {domain}: {lines}")]
    Refused {
        domain: String,
        lines: String,
        mismatches: Vec<ConfigMismatch>,
    },
    #[error(
        "launch refused: domain {domain}: the attestation server could not check it ({detail}); \
         the gate fails closed (install it with --fail-open to start anyway)"
    )]
    Unreachable { domain: String, detail: String },
    #[error(
        "--domain {found:?}: expected a name of letters, digits, '.', '_' or '-' for the hook file"
    )]
    Name { found: String },
    #[error("{}: {what}", path.display())]
    Script { path: PathBuf, what: &'static str },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for HookError {
    fn class(&self) -> ErrorClass {
        match self {
            HookError::Launch(e) => e.class(),
            HookError::Measurement(e) => e.class(),
            HookError::Refused { .. } | HookError::Unreachable { .. } => ErrorClass::Verification,
            HookError::Args { .. } | HookError::Name { .. } | HookError::Script { .. } => {
                ErrorClass::Input
            }
            HookError::Io { .. } => ErrorClass::Environment,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HookError + '_ {
    move |source| HookError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the gate checks a domain.
pub enum HookGate<'a> {
    /// A reference configuration file.
    Local(&'a Path),
    /// The server holding each VM's reference (the VM's name there is the domain's name); the
    /// measurement is signed by `signer`, the verdict checked under `server_key`.
    Server {
        client: &'a vmattest_client::Client,
        server_key: Option<&'a Path>,
        signer: &'a dyn Signer,
    },
}

impl fmt::Debug for HookGate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookGate::Local(p) => f.debug_tuple("Local").field(p).finish(),
            HookGate::Server { server_key, .. } => f
                .debug_struct("Server")
                .field("server_key", server_key)
                .finish_non_exhaustive(),
        }
    }
}

/// What one hook call did.
#[derive(Debug, Clone, Serialize)]
pub struct HookOutcome {
    pub domain: String,
    /// `prepare`, `start`, ...: libvirt's operation.
    pub op: String,
    /// Whether the XML was checked (only at `prepare begin` and `start begin`, and only for the
    /// gated domain).
    pub checked: bool,
    /// The measured configuration root, when checked.
    pub root: Option<String>,
    /// Set when the server could not be reached and the gate fails open.
    pub warning: Option<String>,
}

impl fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain {}: {}: ", self.domain, self.op)?;
        match (&self.warning, self.checked) {
            (Some(w), _) => write!(f, "started unchecked: {w}"),
            (None, true) => write!(f, "the configuration meets the reference"),
            (None, false) => write!(f, "not gated"),
        }
    }
}

/// Whether a hook call with libvirt's arguments `argv` is one the gate checks: `prepare begin`
/// or `start begin` of the gated domain. Every other call (`started`, `stopped`, `release`,
/// `migrate`, `restore`, `reconnect`, ...) must succeed whatever else fails: libvirt aborts a
/// migration or a restore whose hook fails.
pub fn gated(argv: &[String], only: Option<&str>) -> bool {
    match argv {
        [name, op, sub, _] => {
            matches!(op.as_str(), "prepare" | "start")
                && sub == "begin"
                && only.is_none_or(|o| o == name)
        }
        _ => false,
    }
}

/// One hook call: `argv` is libvirt's `NAME OP SUBOP EXTRA`, `xml` its standard input. `only`
/// restricts the gate to one domain; `fail_open` lets a domain start when the server cannot
/// be reached (never when it answers with a mismatch).
pub fn run(
    argv: &[String],
    xml: &str,
    gate: &HookGate<'_>,
    only: Option<&str>,
    fail_open: bool,
) -> Result<HookOutcome, HookError> {
    let [name, op, _, _] = argv else {
        return Err(HookError::Args {
            found: argv.to_vec(),
        });
    };
    let mut outcome = HookOutcome {
        domain: name.clone(),
        op: op.clone(),
        checked: false,
        root: None,
        warning: None,
    };
    if !gated(argv, only) {
        return Ok(outcome);
    }
    let origin = PathBuf::from(format!("from libvirt for domain {name}"));
    let params = vmattest_vmconfig::domain_params(xml, &origin).map_err(MeasurementError::Xml)?;
    let params = measurement::canonical(params, &Packages::None)?;
    let refused = |mismatches: Vec<ConfigMismatch>| HookError::Refused {
        domain: name.clone(),
        lines: mismatches
            .iter()
            .map(measurement::mismatch_line)
            .collect::<Vec<_>>()
            .join("; "),
        mismatches,
    };
    outcome.checked = true;
    let mismatches = match gate {
        HookGate::Local(reference) => {
            let list = ConfigList::new(params).map_err(MeasurementError::Config)?;
            measurement::check(reference, list.params())?
        }
        HookGate::Server {
            client,
            server_key,
            signer,
        } => {
            let m = measurement::measure(params, name, *signer, crate::now())?;
            outcome.root = Some(m.root());
            match server_check(client, *server_key, name, &m) {
                Err(LaunchError::Server(e)) if e.class() == ErrorClass::Environment => {
                    if !fail_open {
                        return Err(HookError::Unreachable {
                            domain: name.clone(),
                            detail: e.to_string(),
                        });
                    }
                    outcome.warning = Some(format!("the server could not check it: {e}"));
                    return Ok(outcome);
                }
                other => other?,
            }
        }
    };
    if !mismatches.is_empty() {
        return Err(refused(mismatches));
    }
    Ok(outcome)
}

/// What `install-hook` and `uninstall-hook` did.
#[derive(Debug, Clone, Serialize)]
pub struct HookChange {
    pub path: String,
    /// The gated domain; `None` gates every domain.
    pub domain: Option<String>,
    /// `installed`, `removed` or `absent`.
    pub action: &'static str,
}

impl fmt::Display for HookChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let which = self
            .domain
            .as_ref()
            .map_or_else(|| "every domain".to_owned(), |d| format!("domain {d}"));
        match self.action {
            "installed" => write!(
                f,
                "installed the launch gate for {which}: {} (libvirt looks for hooks when it \
                 starts: restart libvirtd if this is its first)",
                self.path
            ),
            "removed" => write!(f, "removed the launch gate for {which}: {}", self.path),
            _ => write!(f, "no launch gate for {which} at {}", self.path),
        }
    }
}

/// The hook file for `domain` (every domain when `None`) in `dir`.
pub fn script_path(dir: &Path, domain: Option<&str>) -> Result<PathBuf, HookError> {
    match domain {
        None => Ok(dir.join("vmattest")),
        Some(d)
            if !d.is_empty()
                && !d.starts_with('.')
                && d.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)) =>
        {
            Ok(dir.join(format!("vmattest-{d}")))
        }
        Some(d) => Err(HookError::Name {
            found: d.to_owned(),
        }),
    }
}

/// Writes the hook script (0755) that runs `exe` with `args` and then libvirt's arguments.
/// An existing file is replaced only when it is one of ours; a symlink is never followed.
pub fn install(path: &Path, exe: &Path, args: &[String]) -> Result<(), HookError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    check_ours(path)?;
    let mut text = format!(
        "#!/bin/sh\n{MARKER}, written by `vmattest libvirt install-hook`.\n\
         # libvirt runs it with the domain XML on stdin; it never calls libvirt back.\nexec {}",
        quote(&exe.to_string_lossy())
    );
    for a in args {
        text.push(' ');
        text.push_str(&quote(a));
    }
    text.push_str(" -- \"$@\"\n");
    let tmp = path.with_extension("vmattest-new");
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        // create_new: never through a symlink planted at the temporary name.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::set_permissions(&tmp, Permissions::from_mode(0o755)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Removes the hook script at `path`; `false` when there was none.
pub fn uninstall(path: &Path) -> Result<bool, HookError> {
    if !check_ours(path)? {
        return Ok(false);
    }
    std::fs::remove_file(path).map_err(io(path))?;
    Ok(true)
}

/// Whether `path` holds one of our scripts; an error when it holds anything else.
fn check_ours(path: &Path) -> Result<bool, HookError> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        other => other.map_err(io(path))?,
    };
    if !meta.file_type().is_file() {
        return Err(HookError::Script {
            path: path.to_path_buf(),
            what: "expected a vmattest hook script, found a symlink or a non-file",
        });
    }
    let text = crate::files::read_capped(path, 64 * 1024, "hook script").map_err(|_| {
        HookError::Script {
            path: path.to_path_buf(),
            what: "expected a vmattest hook script, found an unreadable or large file",
        }
    })?;
    if !String::from_utf8_lossy(&text).contains(MARKER) {
        return Err(HookError::Script {
            path: path.to_path_buf(),
            what: "expected a vmattest hook script, found another program's; left as it is",
        });
    }
    Ok(true)
}

/// One shell word, single-quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scripts_are_ours_alone_and_quoted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = script_path(tmp.path(), Some("web-1")).unwrap();
        assert!(script_path(tmp.path(), Some("../x")).is_err());
        assert!(script_path(tmp.path(), Some(".hidden")).is_err());
        install(&path, Path::new("/usr/bin/vmattest"), &["it's".into()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r"'it'\''s' -- "), "{text}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(uninstall(&path).unwrap());
        assert!(!uninstall(&path).unwrap());
        // Somebody else's hook is never replaced or removed.
        std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        assert!(install(&path, Path::new("/x"), &[]).is_err());
        assert!(uninstall(&path).is_err());
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(uninstall(&path).is_err());
    }

    #[test]
    fn other_operations_and_domains_are_not_gated() {
        let gate = HookGate::Local(Path::new("/nonexistent"));
        let args = |op: &str, sub: &str| -> Vec<String> {
            ["g", op, sub, "-"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        };
        let out = run(&args("started", "begin"), "", &gate, None, false).unwrap();
        assert!(!out.checked);
        let out = run(&args("prepare", "begin"), "", &gate, Some("other"), false).unwrap();
        assert!(!out.checked);
        assert!(matches!(
            run(&["g".into()], "", &gate, None, false),
            Err(HookError::Args { .. })
        ));
    }
}
