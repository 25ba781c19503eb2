//! `vmattest serve`: the attestation server, on embedded defaults (SQLite in the state dir).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use vmattest_server::listen::Limits;
use vmattest_server::{Config, Settings};
use vmattest_sign::SigAlg;

use crate::output;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (see --ready-file).
    #[arg(long, default_value = "127.0.0.1:8750")]
    pub listen: SocketAddr,
    /// sqlite://PATH or postgres://USER@HOST:PORT/DB [default: sqlite in the state dir].
    #[arg(long)]
    pub db: Option<String>,
    /// Holds the EAR signing key and the default database
    /// [default: $XDG_STATE_HOME/vmattest/server].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Where the first start writes the bootstrap admin token [default: STATE_DIR/admin.token].
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Key type of the EAR signing key made on first start: ed25519 (EdDSA) or p384 (ES384).
    #[arg(long, default_value = "ed25519")]
    pub ear_alg: String,
    /// Serve HTTPS with this certificate chain (PEM) and --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Evidence time must be within this many seconds of the server's clock.
    #[arg(long, default_value_t = 60)]
    pub window_secs: u32,
    /// How long an issued nonce stays usable.
    #[arg(long, default_value_t = 120)]
    pub nonce_ttl_secs: u32,
    /// Webhook delivery attempts per alert.
    #[arg(long, default_value_t = 6)]
    pub webhook_attempts: u32,
    /// A request's head (request line and headers) must arrive within this many seconds of its
    /// first byte.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// A request's body must arrive within this many seconds of its head (else 408).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
    /// A connection waiting for a request is closed after this many seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// A TLS handshake must complete within this many seconds of the accept.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_secs: u64,
    /// Open connections in total; more are closed at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Open connections from one client address; more are closed at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_ip: u64,
    /// Log lines as text or json (to stderr).
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// Once listening, write the bound address here (for supervisors and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

fn default_state_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set; give --state-dir")?)
            .join(".local/state"),
    };
    Ok(base.join("vmattest/server"))
}

fn init_logs(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMATTEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("--log-format: expected text or json, found {other:?}"),
    }
    Ok(())
}

pub fn run(a: ServeArgs, json: bool) -> anyhow::Result<()> {
    init_logs(&a.log_format)?;
    let ear_alg = match a.ear_alg.as_str() {
        "ed25519" => SigAlg::Ed25519,
        "p384" => SigAlg::EcdsaP384,
        other => bail!("--ear-alg: expected ed25519 or p384, found {other:?}"),
    };
    let state_dir = match a.state_dir {
        Some(d) => d,
        None => default_state_dir()?,
    };
    let db_url =
        a.db.unwrap_or_else(|| format!("sqlite://{}", state_dir.join("vmattest.db").display()));
    let config = Config {
        listen: a.listen,
        db_url,
        admin_token_file: a
            .admin_token_file
            .unwrap_or_else(|| state_dir.join("admin.token")),
        state_dir,
        ear_alg,
        tls: a.tls_cert.zip(a.tls_key),
        settings: Settings {
            window_secs: i64::from(a.window_secs),
            nonce_ttl_secs: i64::from(a.nonce_ttl_secs),
            webhook_attempts: i64::from(a.webhook_attempts),
            webhook_timeout: Duration::from_secs(5),
        },
        limits: Limits {
            header_timeout: Duration::from_secs(a.header_timeout_secs),
            body_timeout: Duration::from_secs(a.body_timeout_secs),
            idle_timeout: Duration::from_secs(a.idle_timeout_secs),
            tls_handshake_timeout: Duration::from_secs(a.tls_handshake_timeout_secs),
            max_connections: usize::try_from(a.max_connections).unwrap_or(usize::MAX),
            max_connections_per_ip: usize::try_from(a.max_connections_per_ip).unwrap_or(usize::MAX),
        },
    };
    let ready_file = a.ready_file;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut ready_err = None;
    runtime.block_on(vmattest_server::serve(config, |addr| {
        if let Some(f) = &ready_file
            && let Err(e) =
                vmattest_host::files::write_atomic(f, format!("{addr}\n").as_bytes(), "ready file")
        {
            ready_err = Some(e);
        }
        if json {
            let _ = output::print(&serde_json::json!({ "listening": addr.to_string() }));
        } else {
            let _ = output::line(format_args!("listening on {addr}"));
        }
    }))?;
    if let Some(e) = ready_err {
        return Err(anyhow::Error::new(e).context("writing --ready-file"));
    }
    Ok(())
}
