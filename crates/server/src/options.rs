//! The server's options, as `vmattest serve` and a host's service manager give them: defaults
//! that run without configuration (SQLite in the state directory), checked into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::listen::Limits;
use crate::{AlgNames, Config, Settings};

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("HOME is not set: expected --state-dir")]
    NoHome,
    #[error("--ear-alg: expected ed25519 or p384, found {0:?}")]
    EarAlg(String),
    #[error("--jose-alg-names: expected rfc9864 or legacy, found {0:?}")]
    AlgNames(String),
    #[error("--log-format: expected text or json, found {0:?}")]
    LogFormat(String),
}

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
    /// How EARs and the JWKS name Ed25519: rfc9864 (`Ed25519`) or legacy (`EdDSA`, for JWT
    /// libraries that predate RFC 9864).
    #[arg(long, default_value = "rfc9864")]
    pub jose_alg_names: String,
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

impl ServeArgs {
    /// The server configuration these options describe.
    pub fn config(self) -> Result<Config, OptionsError> {
        let ear_alg = crate::ear::key_alg(&self.ear_alg)
            .ok_or_else(|| OptionsError::EarAlg(self.ear_alg.clone()))?;
        let alg_names = match self.jose_alg_names.as_str() {
            "rfc9864" => AlgNames::FullySpecified,
            "legacy" => AlgNames::Legacy,
            other => return Err(OptionsError::AlgNames(other.to_owned())),
        };
        let state_dir = match self.state_dir {
            Some(d) => d,
            None => default_state_dir()?,
        };
        let db_url = self
            .db
            .unwrap_or_else(|| format!("sqlite://{}", state_dir.join("vmattest.db").display()));
        let secs = Duration::from_secs;
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Config {
            listen: self.listen,
            db_url,
            admin_token_file: self
                .admin_token_file
                .unwrap_or_else(|| state_dir.join("admin.token")),
            state_dir,
            ear_alg,
            alg_names,
            tls: self.tls_cert.zip(self.tls_key),
            settings: Settings {
                window_secs: i64::from(self.window_secs),
                nonce_ttl_secs: i64::from(self.nonce_ttl_secs),
                webhook_attempts: i64::from(self.webhook_attempts),
                webhook_timeout: secs(5),
            },
            limits: Limits {
                header_timeout: secs(self.header_timeout_secs),
                body_timeout: secs(self.body_timeout_secs),
                idle_timeout: secs(self.idle_timeout_secs),
                tls_handshake_timeout: secs(self.tls_handshake_timeout_secs),
                max_connections: count(self.max_connections),
                max_connections_per_ip: count(self.max_connections_per_ip),
            },
        })
    }

    /// Sends the server's log lines to stderr, as text or JSON (`--log-format`), filtered by
    /// `VMATTEST_LOG` (default `info,sqlx=warn`).
    pub fn init_logs(&self) -> Result<(), OptionsError> {
        init_logs(&self.log_format)
    }
}

/// Sends log lines to stderr as `text` or `json`, filtered by `VMATTEST_LOG` (default
/// `info,sqlx=warn`): the server's and the host daemon's.
pub fn init_logs(format: &str) -> Result<(), OptionsError> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VMATTEST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => return Err(OptionsError::LogFormat(other.to_owned())),
    }
    Ok(())
}

/// `$XDG_STATE_HOME/vmattest/server`, or `~/.local/state/vmattest/server`.
fn default_state_dir() -> Result<PathBuf, OptionsError> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").ok_or(OptionsError::NoHome)?)
            .join(".local/state"),
    };
    Ok(base.join("vmattest/server"))
}
