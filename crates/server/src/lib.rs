//! vmattest attestation server: `app(state) -> Router` over a [`Db`], plus [`serve`], which
//! binds, accepts under connection caps and timeouts ([`listen`]), runs the background tasks
//! (webhooks, nonce purge) and shuts down gracefully.
//!
//! The server holds no per-request state of its own: nonces, results and alerts live in the
//! database, so several instances can share one PostgreSQL.

mod alerts;
mod appraise;
pub mod auth;
pub mod db;
pub mod ear;
pub mod earkeys;
pub mod error;
pub mod hostattest;
mod keyrelease;
pub mod listen;
mod locate;
mod metrics;
pub mod nonce;
pub mod openapi;
pub mod options;
mod private;
mod refconfig;
mod reports;
mod routes;
pub mod secrets;
pub mod state;
mod tls;
mod tokens;
mod tpm;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use tokio::net::TcpListener;
use vmattest_api::{ErrorBody, ErrorCode, MAX_BODY_BYTES, Role};
use vmattest_sign::SigAlg;

pub use db::Db;
pub use ear::{AlgNames, EarSigner};
pub use error::ServerError;
pub use state::{AppState, Settings};

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(routes::health))
        .route("/v1/openapi.json", get(routes::openapi))
        .route("/v1/ear-key", get(routes::ear_key))
        .route("/v1/ear-key/rotate", post(routes::rotate_ear_key))
        .route("/.well-known/jwks.json", get(routes::jwks))
        .route("/metrics", get(routes::metrics))
        .route("/v1/tokens", post(tokens::issue).get(tokens::list))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route("/v1/hosts", post(routes::new_host).get(routes::hosts))
        .route("/v1/hosts/{host}/challenge", post(hostattest::challenge))
        .route("/v1/hosts/{host}/attest", post(hostattest::attest))
        .route(
            "/v1/hosts/{host}/attestations",
            get(hostattest::attestations),
        )
        .route("/v1/host-policies", get(hostattest::policies))
        .route(
            "/v1/host-policies/{group}",
            put(hostattest::put_policy).delete(hostattest::delete_policy),
        )
        .route("/v1/policies", post(routes::new_policy))
        .route("/v1/policies/{id}", get(routes::policy))
        .route("/v1/vms", post(routes::new_vm))
        .route("/v1/vms/{vm}", get(routes::vm))
        .route("/v1/vms/{vm}/policy", put(routes::set_vm_policy))
        .route("/v1/vms/{vm}/baseline", post(routes::new_baseline))
        .route("/v1/vms/{vm}/challenge", post(routes::challenge))
        .route("/v1/vms/{vm}/key", put(keyrelease::put_key))
        .route("/v1/vms/{vm}/key/release", post(keyrelease::release))
        .route("/v1/evidence", post(routes::evidence))
        .route("/v1/vms/{vm}/results", get(routes::results))
        .route(
            "/v1/vms/{vm}/baseline/{id}/bytes/{region}",
            put(locate::put_baseline_bytes).layer(DefaultBodyLimit::max(locate::MAX_BYTES_BODY)),
        )
        .route("/v1/results/{id}", get(routes::result))
        .route("/v1/results/{id}/locate", post(locate::locate))
        .route("/v1/results/{id}/pages", post(locate::pages))
        .route("/v1/alerts", get(alerts::alerts))
        .route("/v1/alerts/{id}/ack", post(alerts::ack))
        .route(
            "/v1/vms/{vm}/reports",
            post(reports::new_report).get(reports::reports),
        )
        .route(
            "/v1/vms/{vm}/snapshot-requests",
            post(reports::new_snapshot_request).get(reports::snapshot_requests),
        )
        .route(
            "/v1/vms/{vm}/reference-config",
            put(refconfig::put_reference_config).get(refconfig::reference_config),
        )
        .route("/v1/vms/{vm}/config/verify", post(refconfig::verify_config))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

async fn count_responses(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    s.metrics.http(resp.status().as_u16());
    resp
}

/// axum's own rejections (a body over the limit, a path or query that does not decode, a
/// method the route lacks) answer in plain text; they get the JSON error body of every other
/// error, with their status and a code for it.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let code = match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::BodyTimeout,
        413 => ErrorCode::TooLarge,
        s if s >= 500 => ErrorCode::Internal,
        _ => ErrorCode::Malformed,
    };
    // Rejection texts are short; anything longer is cut, not buffered.
    let text = axum::body::to_bytes(resp.into_body(), 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let error = match text.split_whitespace().collect::<Vec<_>>().join(" ") {
        t if t.is_empty() => status.canonical_reason().unwrap_or("error").to_lowercase(),
        t => t,
    };
    (status, Json(ErrorBody { code, error })).into_response()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db_url: String,
    pub state_dir: PathBuf,
    /// Where the first start writes a bootstrap admin token (mode 0600).
    pub admin_token_file: PathBuf,
    pub ear_alg: SigAlg,
    /// How EAR JWTs and the JWKS name the Ed25519 algorithm.
    pub alg_names: AlgNames,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub settings: Settings,
    /// Connection caps and timeouts.
    pub limits: listen::Limits,
}

/// Makes the state directory and database private, opens the database, seals webhook secrets
/// left in clear, and on an empty database issues the first admin token into
/// `admin_token_file`.
pub async fn prepare(config: &Config) -> Result<AppState, ServerError> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| ServerError::Io { path, source }
    };
    // The state dir holds the keys and, by default, the database: private to the server's user.
    private::state_dir(&config.state_dir)?;
    let sqlite = db::sqlite_path(&config.db_url);
    if let Some(path) = &sqlite {
        private::sqlite_files(path)?;
    }
    let db = Db::connect(&config.db_url).await?;
    if let Some(path) = &sqlite {
        private::sqlite_files(path)?;
    }
    let secrets = secrets::SecretsKey::load_or_create(&config.state_dir.join("secrets.key"))?;
    let sealed = db.seal_plaintext_secrets(&secrets).await?;
    if sealed > 0 {
        tracing::info!(
            sealed,
            "webhook secrets stored in clear by an earlier version are now sealed"
        );
    }
    let ear = earkeys::EarKeys::load(&config.state_dir, config.ear_alg, config.alg_names)?;
    if db.count_tokens().await? == 0 {
        let token = auth::new_token()?;
        write_secret(&config.admin_token_file, format!("{token}\n").as_bytes())
            .map_err(io(&config.admin_token_file))?;
        db.insert_token(
            &auth::token_hash(&token),
            Role::Admin.name(),
            None,
            state::now_secs(),
        )
        .await?;
        tracing::info!(file = %config.admin_token_file.display(), "bootstrap admin token written");
    }
    let nonces = nonce::NonceKey::load_or_create(&config.state_dir.join("nonce.key"))?;
    AppState::new(db, ear, nonces, secrets, config.settings.clone()).await
}

/// Writes a new file of mode 0600 (refusing to replace one) and syncs it.
pub(crate) fn write_secret(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Serves until SIGINT or SIGTERM; `ready` receives the bound address.
pub async fn serve(config: Config, ready: impl FnOnce(SocketAddr)) -> Result<(), ServerError> {
    // One process-wide TLS provider for the webhook client and the listener.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Whatever the server creates (database side files, keys) is private to its user.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let nofile = listen::raise_nofile_limit();
    let mut limits = config.limits.clone();
    // Keep descriptors for the database, key files and webhooks beyond the connection cap.
    let room = usize::try_from(nofile.saturating_sub(64)).unwrap_or(usize::MAX);
    if limits.max_connections > room {
        tracing::warn!(
            max_connections = limits.max_connections,
            open_file_limit = nofile,
            "the connection cap is above the open-file limit; lowered to {room}"
        );
        limits.max_connections = room;
    }
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let state = prepare(&config).await?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen.to_string(),
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    let background = [
        tokio::spawn(webhook::run(state.clone())),
        tokio::spawn(purge_nonces(state.clone())),
    ];
    let router = app(state.clone());
    tracing::info!(%addr, database = state.db.backend.name(), tls = config.tls.is_some(), "listening");
    ready(addr);
    listen::run(
        listener,
        router,
        tls,
        limits,
        state.clone(),
        shutdown_signal(),
    )
    .await;
    background.iter().for_each(tokio::task::JoinHandle::abort);
    state.db.pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn purge_nonces(state: AppState) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        // Keep refused nonces a while so that a late replay is named as such.
        let before = state::now_secs() - 3600;
        if let Err(e) = state.db.purge_nonces(before).await {
            tracing::warn!(error = %e, "nonce purge");
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
