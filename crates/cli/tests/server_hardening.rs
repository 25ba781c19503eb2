//! Server hardening, against a real `vmattest serve` over loopback: connection caps and
//! timeouts (idle sockets, slowloris heads, trickled bodies, stalled TLS handshakes), private
//! state files with sealed webhook secrets, and snapshot reports that must answer a pending
//! request in time. Client addresses other than 127.0.0.1 are other loopback addresses
//! (127.0.0.0/8), so that per-address caps can be seen from one host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{Server, register_vms};
use common::vmattest;
use vmattest_api::{ErrorCode, NewHost, NewToken, NewVm, Role, Webhook as Hook};
use vmattest_client::Client;
use vmattest_core::alg::{Digest, HashAlg};
use vmattest_core::attest::{ComponentCheck, SnapshotReport};
use vmattest_core::chain::SeqNo;
use vmattest_core::record::UnixTime;
use vmattest_sign::{SecretKey, SigAlg, Signer};

fn addr(server: &Server) -> SocketAddr {
    server.addr.parse().unwrap()
}

/// A connection from the loopback address `127.0.0.{last}`.
fn connect_from(last: u8, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt
        .block_on(async {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind(SocketAddr::from(([127, 0, 0, last], 0)))?;
            s.connect(to).await
        })
        .unwrap()
        .into_std()
        .unwrap();
    s.set_nonblocking(false).unwrap();
    s
}

/// True when the server closes `s` within `wait` (end of stream or reset); bytes it sends are
/// read and skipped.
/// A connection from 127.0.0.`last` that the server has accepted and served one request on
/// (so it counts against the caps for sure), kept open.
fn served_from(last: u8, to: SocketAddr) -> TcpStream {
    let mut s = connect_from(last, to);
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before answering: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap();
            if body.len() >= len {
                return s;
            }
        }
    }
}

fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// `GET path` (with `token`) on a fresh connection from `127.0.0.{last}`: the whole answer.
fn get_from(last: u8, to: SocketAddr, path: &str, token: Option<&str>) -> String {
    let mut s = connect_from(last, to);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /v1/health` on a fresh connection from `127.0.0.{last}`; the time it took.
fn health_from(last: u8, to: SocketAddr) -> Duration {
    let started = Instant::now();
    let text = get_from(last, to, "/v1/health", None);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"status\":\"ok\""), "{text}");
    started.elapsed()
}

/// Sends `head`, then `byte` every `every` until the server closes the connection; returns
/// how long the server let it go on (None if it never closed within `give_up`).
fn trickle(
    to: SocketAddr,
    head: Vec<u8>,
    byte: u8,
    every: Duration,
    give_up: Duration,
) -> std::thread::JoinHandle<(Option<Duration>, Vec<u8>)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut s = TcpStream::connect(to).unwrap();
        s.write_all(&head).unwrap();
        let mut reader = s.try_clone().unwrap();
        let answer = std::thread::spawn(move || {
            let mut out = Vec::new();
            reader
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let _ = reader.read_to_end(&mut out);
            (started.elapsed(), out)
        });
        while started.elapsed() < give_up {
            if s.write_all(&[byte]).is_err() || answer.is_finished() {
                break;
            }
            std::thread::sleep(every);
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let (closed_at, out) = answer.join().unwrap();
        ((closed_at < give_up).then_some(closed_at), out)
    })
}

#[test]
fn regression_idle_sockets_exhaust_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("state"),
        None,
        &[
            "--idle-timeout-secs",
            "3",
            "--header-timeout-secs",
            "2",
            "--max-connections",
            "1000",
            "--max-connections-per-ip",
            "320",
        ],
    );
    let to = addr(&server);
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(to).unwrap()).collect();
    // Slowloris: a request head one byte every 200 ms, never finished.
    let slow: Vec<_> = (0..5)
        .map(|_| {
            trickle(
                to,
                b"GET /v1/health HTTP/1.1\r\nHost: t\r\nX-Slow: ".to_vec(),
                b'a',
                Duration::from_millis(200),
                Duration::from_secs(12),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Fresh clients, from the attacker's address and from another, are answered at once.
    for last in [1, 2, 1, 3] {
        let took = health_from(last, to);
        assert!(took < Duration::from_secs(1), "health took {took:?}");
    }
    // The idle sockets are still open before their timeout...
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!closed_within(&mut idle[0], Duration::from_millis(100)));
    // ...the slowloris heads are cut after the header timeout, however they trickle...
    for s in slow {
        let (closed, _) = s.join().unwrap();
        let closed = closed.expect("the server never closed a slowloris connection");
        assert!(
            closed >= Duration::from_millis(1800) && closed < Duration::from_secs(5),
            "slowloris connection closed after {closed:?}"
        );
    }
    // ...and every idle socket is closed by the server after the idle timeout.
    for s in &mut idle {
        let left = Duration::from_secs(8).saturating_sub(started.elapsed());
        assert!(
            closed_within(s, left),
            "an idle socket outlived the idle timeout"
        );
    }
    let all_closed = started.elapsed();
    assert!(all_closed >= Duration::from_millis(2800), "{all_closed:?}");
    assert!(health_from(1, to) < Duration::from_secs(1));
    let metrics = server_metrics(&server);
    assert!(
        metrics.contains("vmattest_connections_closed_total{reason=\"idle_timeout\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vmattest_connections_closed_total{reason=\"header_timeout\"} 5"),
        "{metrics}"
    );
}

/// The server's metrics, fetched from an address no test connection uses.
fn server_metrics(server: &Server) -> String {
    get_from(9, addr(server), "/metrics", Some(&server.admin_token()))
}

#[test]
fn regression_connections_over_cap_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("state"),
        None,
        &["--max-connections", "10", "--max-connections-per-ip", "4"],
    );
    let to = addr(&server);
    // Each held connection is served once first: the server has surely accepted it.
    let mut held: Vec<TcpStream> = (0..4).map(|_| served_from(1, to)).collect();
    // A fifth from the same address is closed at once, not queued.
    let mut over = connect_from(1, to);
    // "At once" against a loaded test machine: well below the 10 s header timeout that would
    // close a queued connection anyway.
    assert!(closed_within(&mut over, Duration::from_secs(5)));
    assert!(!closed_within(&mut held[0], Duration::from_millis(200)));
    // Other addresses are still served.
    assert!(health_from(2, to) < Duration::from_secs(1));
    // Up to the total cap: 4 + 4 + 2.
    held.extend((0..4).map(|_| served_from(3, to)));
    held.extend((0..2).map(|_| served_from(4, to)));
    let mut over = connect_from(5, to);
    assert!(closed_within(&mut over, Duration::from_secs(5)));
    // Closing some gives their places back.
    held.truncate(6);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from(5, to);
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_end(&mut out);
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no place given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = server_metrics(&server);
    assert!(metrics.contains("reason=\"per_ip_cap\"} 1"), "{metrics}");
    assert!(metrics.contains("reason=\"total_cap\"}"), "{metrics}");
}

#[test]
fn regression_trickled_body_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("state"),
        None,
        &["--body-timeout-secs", "2", "--header-timeout-secs", "2"],
    );
    let head = format!(
        "POST /v1/hosts HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        server.admin_token()
    );
    let (closed, answer) = trickle(
        addr(&server),
        head.into_bytes(),
        b' ',
        Duration::from_millis(100),
        Duration::from_secs(12),
    )
    .join()
    .unwrap();
    let closed = closed.expect("the server never cut the trickled body");
    assert!(
        closed >= Duration::from_millis(1800) && closed < Duration::from_secs(5),
        "{closed:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
    assert!(health_from(1, addr(&server)) < Duration::from_secs(1));
}

/// A self-signed CA and a certificate it issues for 127.0.0.1, as tests/server.rs makes them.
fn tls_files(d: &Path) {
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let steps = [
        format!(
            "req -x509 {ec} -subj /CN=ca -days 1 -keyout {} -out {}",
            p("ca.key"),
            p("ca.pem")
        ),
        format!(
            "req {ec} -subj /CN=localhost -keyout {} -out {}",
            p("key.pem"),
            p("leaf.csr")
        ),
        format!(
            "x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 1 -extfile {} -out {}",
            p("leaf.csr"),
            p("ca.pem"),
            p("ca.key"),
            p("ext"),
            p("cert.pem")
        ),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(args.split(' '))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn regression_tls_handshake_never_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tls_files(d);
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let server = Server::start_with(
        &d.join("state"),
        None,
        &[
            "--tls-cert",
            &p("cert.pem"),
            "--tls-key",
            &p("key.pem"),
            "--tls-handshake-timeout-secs",
            "1",
            "--idle-timeout-secs",
            "30",
        ],
    );
    let to = addr(&server);
    let started = Instant::now();
    // Silent sockets, and one that stops in the middle of its ClientHello.
    let mut stalled: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(to).unwrap()).collect();
    let mut half = TcpStream::connect(to).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    stalled.push(half);
    // A real client is served meanwhile.
    std::fs::write(d.join("token"), server.admin_token()).unwrap();
    let health = vmattest([
        "--json",
        "remote",
        "--server",
        &format!("https://{}", server.addr),
        "--token-file",
        &p("token"),
        "--ca-cert",
        &p("ca.pem"),
        "health",
    ])
    .ok();
    assert!(health.stdout.contains("\"ok\""), "{}", health.stdout);
    for s in &mut stalled {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        assert!(closed_within(s, left), "a stalled TLS handshake was kept");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

#[test]
fn regression_state_dir_0755_and_db_0644() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A database left 0644 by an earlier version is tightened too.
    let mut server = Server::start(&state, None);
    server.stop();
    let db = state.join("server.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::start(&state, None);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    // Written while the server runs, so the side files exist.
    let admin = Client::new(&server.url(), Some(server.admin_token())).unwrap();
    register_vms(&admin, "nohost", &[]);
    for name in ["server.db", "server.db-wal", "server.db-shm"] {
        let p = state.join(name);
        assert!(p.exists(), "{name}");
        assert_eq!(mode(&p), 0o600, "{name}");
    }
    for name in ["secrets.key", "nonce.key", "admin.token"] {
        assert_eq!(mode(&state.join(name)), 0o600, "{name}");
    }
    // A symlinked state directory is refused, naming it.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&state, &link).unwrap();
    let r = vmattest([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        link.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
}

#[test]
fn regression_webhook_secret_stored_in_clear() {
    const SECRET: &str = "hook-secret-0123456789-plain";
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = Server::start(&state, None);
    let admin = Client::new(&server.url(), Some(server.admin_token())).unwrap();
    let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
    admin
        .add_host(&NewHost {
            name: "host1".into(),
            public_key_pem: key.public_key().to_pem(),
            tpm: None,
            group: None,
        })
        .unwrap();
    let pid = register_vms(&admin, "host1", &[]);
    let vm = admin
        .add_vm(&NewVm {
            name: "vm1".into(),
            host: "host1".into(),
            policy_id: pid,
            approved_subsets: vec!["all".into()],
            threshold: 50,
            webhook: Some(Hook {
                url: "http://127.0.0.1:9/hook".into(),
                secret: SECRET.into(),
            }),
            on_alert: Default::default(),
        })
        .unwrap();
    assert!(vm.has_webhook);
    server.stop();
    // Nowhere in the database files, WAL included.
    for name in ["server.db", "server.db-wal"] {
        let bytes = std::fs::read(state.join(name)).unwrap_or_default();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{name} holds the webhook secret in clear"
        );
    }
    // Deliveries still carry the HMAC under the secret: tests/server.rs (attestation_flow)
    // checks them end to end.
}

/// A report on `vm1`, seq 0, signed by `key` at `secs` over `nonce`.
fn report(key: &SecretKey, nonce: &[u8], secs: u64) -> Vec<u8> {
    let d = Digest::new(HashAlg::Sha256, &[7; 32]).unwrap();
    let r = SnapshotReport {
        vm: "vm1".into(),
        time: UnixTime { secs, nanos: 0 },
        nonce: nonce.to_vec(),
        seq: SeqNo(0),
        link: d,
        components: vec![ComponentCheck {
            name: "ram".into(),
            expected: d,
            found: d,
        }],
        key_ids: vec![key.key_id()],
    };
    vmattest_agent::evidence::sign(r, key)
        .unwrap()
        .encode()
        .unwrap()
}

fn refused<T: std::fmt::Debug>(r: Result<T, vmattest_client::ClientError>, code: ErrorCode) {
    let e = r.expect_err("expected a refusal");
    assert_eq!(e.code(), Some(&code), "{e}");
}

#[test]
fn regression_old_match_report_reposted_as_fresh() {
    let dir = tempfile::tempdir().unwrap();
    reports_answer_requests_once(&Server::start(&dir.path().join("state"), None));
}

#[test]
fn regression_old_match_report_reposted_as_fresh_on_postgres() {
    let pg = vmattest_testkit::Postgres::start()
        .expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    reports_answer_requests_once(&Server::start(&dir.path().join("state"), Some(&pg.url())));
}

fn reports_answer_requests_once(server: &Server) {
    let admin = Client::new(&server.url(), Some(server.admin_token())).unwrap();
    let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
    admin
        .add_host(&NewHost {
            name: "host1".into(),
            public_key_pem: key.public_key().to_pem(),
            tpm: None,
            group: None,
        })
        .unwrap();
    register_vms(&admin, "host1", &["vm1"]);
    let agent_token = admin
        .create_token(&NewToken {
            role: Role::Agent,
            host: Some("host1".into()),
        })
        .unwrap()
        .token;
    let agent = Client::new(&server.url(), Some(agent_token)).unwrap();
    let now = vmattest_host::now().secs;

    // A Match report answering a request is accepted once.
    let req = admin.request_snapshot("vm1", 0).unwrap();
    let nonce = hex::decode(&req.nonce).unwrap();
    let old = report(&key, &nonce, now);
    let receipt = agent.post_report("vm1", &old).unwrap();
    assert_eq!(receipt.request_id, Some(req.id));
    assert_eq!(receipt.verdict, "match");
    // Posted again, even while another request is pending, it is a replay.
    let pending = admin.request_snapshot("vm1", 0).unwrap();
    refused(agent.post_report("vm1", &old), ErrorCode::ReplayedNonce);
    // No nonce, or one the server never issued, answers nothing.
    refused(
        agent.post_report("vm1", &report(&key, &[], now)),
        ErrorCode::MissingNonce,
    );
    refused(
        agent.post_report("vm1", &report(&key, &[0xab; 32], now)),
        ErrorCode::UnknownNonce,
    );
    // The pending request's nonce, but signed an hour ago (or ahead): stale.
    let fresh_nonce = hex::decode(&pending.nonce).unwrap();
    refused(
        agent.post_report("vm1", &report(&key, &fresh_nonce, now - 3600)),
        ErrorCode::Stale,
    );
    refused(
        agent.post_report("vm1", &report(&key, &fresh_nonce, now + 3600)),
        ErrorCode::Stale,
    );
    // Refusals consumed nothing: the pending request is still answerable, and then only once.
    let r = agent
        .post_report("vm1", &report(&key, &fresh_nonce, now))
        .unwrap();
    assert_eq!(r.request_id, Some(pending.id));
    refused(
        agent.post_report("vm1", &report(&key, &fresh_nonce, now)),
        ErrorCode::ReplayedNonce,
    );
    let stored = admin.reports("vm1").unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
}
