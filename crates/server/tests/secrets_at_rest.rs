//! Webhook secrets written in clear by an earlier version are sealed when the server starts
//! (SQLite in a file, and PostgreSQL), leave no plaintext in the SQLite files, and alerts are
//! still delivered with the HMAC under the original secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::Row as _;
use vmattest_server::listen::Limits;
use vmattest_server::{Config, Db, Settings, prepare};
use vmattest_sign::SigAlg;

const SECRET: &str = "an-old-plaintext-hook-secret";

type Delivery = (Vec<(String, String)>, Vec<u8>);

/// A webhook receiver on a free loopback port: its URL and the deliveries it gets.
fn receiver() -> (String, mpsc::Receiver<Delivery>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send((headers, body));
        }
    });
    (url, rx)
}

/// A VM row with its webhook secret in the plaintext column, as versions before schema v3
/// wrote it, and an alert waiting for delivery.
async fn plant_plaintext_row(url: &str, hook: &str) {
    let db = Db::connect(url).await.unwrap();
    let exec = |sql: &'static str| sqlx::query(sql);
    exec("INSERT INTO hosts (name, public_key_pem, key_id, tpm_backed, created) VALUES ('h1', '-', '-', 0, 0)")
        .execute(&db.pool)
        .await
        .unwrap();
    exec("INSERT INTO policies (id, name, toml, created) VALUES ('p1', 'p', '', 0)")
        .execute(&db.pool)
        .await
        .unwrap();
    exec(
        "INSERT INTO vms (name, host, policy_id, subsets, threshold, on_alert, webhook_url, \
         webhook_secret, created) VALUES ('vm1', 'h1', 'p1', 'all', 50, 'none', $1, $2, 0)",
    )
    .bind(hook.to_string())
    .bind(SECRET.to_string())
    .execute(&db.pool)
    .await
    .unwrap();
    let id: i64 = exec(
        "INSERT INTO results (vm, time, nonce, score, status, body, evidence) \
         VALUES ('vm1', 0, $1, 10, 'contraindicated', '{\"ear\":\"e.a.r\"}', $2) RETURNING id",
    )
    .bind(vec![1u8])
    .bind(vec![2u8])
    .fetch_one(&db.pool)
    .await
    .unwrap()
    .try_get(0)
    .unwrap();
    exec(
        "INSERT INTO alerts (vm, result_id, time, score, status, message, delivered, attempts, \
         next_attempt) VALUES ('vm1', $1, 0, 10, 'contraindicated', 'planted', 0, 0, 0)",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    db.pool.close().await;
}

fn holds_secret(path: &Path) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes())
}

async fn plaintext_is_sealed(state_dir: &Path, url: &str) {
    // As `serve` does: the webhook client needs a TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (hook, deliveries) = receiver();
    plant_plaintext_row(url, &hook).await;
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        db_url: url.to_string(),
        state_dir: state_dir.to_path_buf(),
        admin_token_file: state_dir.join("admin.token"),
        ear_alg: SigAlg::Ed25519,
        alg_names: vmattest_server::AlgNames::default(),
        tls: None,
        settings: Settings::default(),
        limits: Limits::default(),
    };
    let state = prepare(&config).await.unwrap();
    let row =
        sqlx::query("SELECT webhook_secret, webhook_secret_sealed FROM vms WHERE name = 'vm1'")
            .fetch_one(&state.db.pool)
            .await
            .unwrap();
    let clear: Option<String> = row.try_get(0).unwrap();
    let sealed: Vec<u8> = row.try_get(1).unwrap();
    assert_eq!(clear, None);
    assert_eq!(sealed[0], 1, "version byte");
    assert!(!sealed.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    assert_eq!(
        state.secrets.open("vm1", &sealed).unwrap().as_slice(),
        SECRET.as_bytes()
    );
    // Another VM's row does not open it.
    assert!(state.secrets.open("vm2", &sealed).is_err());
    // The alert is delivered with the HMAC under the original secret.
    let task = tokio::spawn(vmattest_server::webhook::run(state.clone()));
    let (headers, body) = tokio::task::spawn_blocking(move || {
        deliveries
            .recv_timeout(Duration::from_secs(20))
            .expect("a webhook delivery")
    })
    .await
    .unwrap();
    task.abort();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let got = headers
        .iter()
        .find(|(k, _)| k == "x-vmattest-signature")
        .map(|(_, v)| v.clone());
    assert_eq!(got, Some(want));
    // A second start finds nothing left to seal and keeps the same key.
    state.db.pool.close().await;
    drop(state);
    let again = prepare(&config).await.unwrap();
    let sealed_again: Vec<u8> =
        sqlx::query("SELECT webhook_secret_sealed FROM vms WHERE name = 'vm1'")
            .fetch_one(&again.db.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
    assert_eq!(sealed_again, sealed);
    again.db.pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_plaintext_webhook_secrets_sealed_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let db = state.join("server.db");
    plaintext_is_sealed(&state, &format!("sqlite://{}", db.display())).await;
    for name in ["server.db", "server.db-wal", "server.db-shm"] {
        assert!(
            !holds_secret(&state.join(name)),
            "{name} holds the secret in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_plaintext_webhook_secrets_sealed_on_postgres() {
    let pg = vmattest_testkit::Postgres::start()
        .expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    plaintext_is_sealed(&dir.path().join("state"), &pg.url()).await;
}
