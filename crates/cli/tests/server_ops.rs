//! The server as operators run it: alerts that deduplicate, acknowledge and resolve; per-VM
//! metrics; EAR keys published as a JWKS and rotated, checked by JWT libraries that fetch the
//! JWKS themselves (PyJWT's PyJWKClient, joserfc); and `remote` configured from the
//! environment and a client file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fixture::{Fixture, evidence_for, flip_code_byte, setup, setup_with};
use common::server::{Server, http, json_of, verify_with_jwks};
use vmattest_api::{AlertState, AttestationResult};

fn round(f: &Fixture) -> AttestationResult {
    f.agent.evidence(&evidence_for(f, &f.host_key)).unwrap()
}

/// `vmattest ARGS` with `env` set and the client file looked for under `home` only.
fn vmattest_env(home: &Path, env: &[(&str, &Path)], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmattest"));
    c.args(args)
        .env_remove("VMATTEST_SERVER")
        .env_remove("VMATTEST_TOKEN_FILE")
        .env_remove("VMATTEST_CA_CERT")
        .env_remove("VMATTEST_CONFIG")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn metric_lines(f: &Fixture) -> String {
    f.auditor.metrics().unwrap()
}

fn alerts_lifecycle(server: &Server) {
    let f = setup_with(server, false);
    assert!(!round(&f).alert);
    flip_code_byte(&f.ram);
    let failing: Vec<i64> = (0..3).map(|_| round(&f)).map(|r| r.id).collect();
    let alerts = f.auditor.alerts(Some("vm1"), false).unwrap();
    assert_eq!(alerts.len(), 1, "one alert for three rounds: {alerts:?}");
    let a = &alerts[0];
    assert_eq!(
        (a.count, a.state, a.result_id, a.last_result_id),
        (3, AlertState::Open, failing[0], failing[2]),
        "{a:?}"
    );
    assert_eq!(a.cause, "regions differ: code");
    assert!(!a.webhook, "no webhook configured: {a:?}");

    // The text listing says nothing of webhooks for a VM without one.
    let home = f.dir.join("home");
    let token = f.dir.join("admin.token");
    let url = PathBuf::from(server.url());
    let env = [
        ("VMATTEST_SERVER", url.as_path()),
        ("VMATTEST_TOKEN_FILE", &token),
    ];
    let out = vmattest_env(&home, &env, &["remote", "alerts", "--vm", "vm1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.contains("open  x3"), "{listing}");
    assert!(!listing.contains("webhook"), "{listing}");

    let m = metric_lines(&f);
    for want in [
        "vmattest_vm_score{vm=\"vm1\"} 0",
        "vmattest_vm_status{vm=\"vm1\",status=\"contraindicated\"} 1",
        "vmattest_vm_status{vm=\"vm1\",status=\"affirming\"} 0",
        "vmattest_vm_alerts{vm=\"vm1\",state=\"open\"} 1",
        "vmattest_vm_last_attested_timestamp_seconds{vm=\"vm1\"} ",
    ] {
        assert!(m.contains(want), "{want} missing from\n{m}");
    }

    // Only an admin acknowledges; an acknowledged alert keeps counting its cause.
    let (status, body) = http(
        "POST",
        &format!("{}/v1/alerts/{}/ack", server.url(), a.id),
        Some(&f.auditor_token),
        None,
    );
    assert_eq!(status, 403, "{body}");
    let out = vmattest_env(
        &home,
        &env,
        &["--json", "remote", "ack-alert", &a.id.to_string()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let acked = json_of(&text(&out.stdout));
    assert_eq!(acked["state"], "acknowledged", "{acked}");
    assert_eq!(acked["acknowledged_by"], "admin", "{acked}");
    round(&f);
    round(&f);
    let alerts = f.auditor.alerts(Some("vm1"), false).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].id, alerts[0].count, alerts[0].state),
        (a.id, 5, AlertState::Acknowledged)
    );
    let m = metric_lines(&f);
    assert!(
        m.contains("vmattest_vm_alerts{vm=\"vm1\",state=\"open\"} 0")
            && m.contains("vmattest_vm_alerts{vm=\"vm1\",state=\"acknowledged\"} 1"),
        "{m}"
    );
    let (status, _) = http(
        "POST",
        &format!("{}/v1/alerts/999999/ack", server.url()),
        Some(&f.admin_token),
        None,
    );
    assert_eq!(status, 404);

    // A passing result resolves it; the next failure opens a new one.
    flip_code_byte(&f.ram);
    assert!(!round(&f).alert);
    assert!(f.auditor.alerts(Some("vm1"), false).unwrap().is_empty());
    let all = f.auditor.alerts(Some("vm1"), true).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, AlertState::Resolved);
    assert!(all[0].resolved_time.is_some());
    assert!(metric_lines(&f).contains("vmattest_vm_alerts{vm=\"vm1\",state=\"acknowledged\"} 0"));
    flip_code_byte(&f.ram);
    round(&f);
    let again = f.auditor.alerts(Some("vm1"), false).unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].id, a.id);
    assert_eq!((again[0].count, again[0].state), (1, AlertState::Open));
}

#[test]
fn alerts_deduplicate_acknowledge_and_resolve_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    alerts_lifecycle(&Server::start(&dir.path().join("state"), None));
}

#[test]
fn alerts_deduplicate_acknowledge_and_resolve_on_postgres() {
    let pg = vmattest_testkit::Postgres::start().expect("PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    alerts_lifecycle(&Server::start(&dir.path().join("state"), Some(&pg.url())));
}

/// A failing guest with a webhook pages once, not every round.
#[test]
fn regression_repeated_failures_send_one_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), None);
    let f = setup(&server);
    flip_code_byte(&f.ram);
    for _ in 0..4 {
        assert!(round(&f).alert);
    }
    f.hook.wait_for(1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.hook.received.lock().unwrap().len(), 1);
    let alerts = f.auditor.alerts(Some("vm1"), false).unwrap();
    assert_eq!((alerts.len(), alerts[0].count), (1, 4), "{alerts:?}");
    assert!(
        alerts[0].webhook && alerts[0].webhook_delivered,
        "{alerts:?}"
    );
}

/// PyJWKClient fetches the JWKS, picks the key by `kid` and verifies; prints each token's
/// status. PyJWT 2.10 knows only the legacy name EdDSA.
const PYJWT: &str = r#"
import sys, jwt
client = jwt.PyJWKClient(sys.argv[1] + "/.well-known/jwks.json", cache_jwk_set=False)
for token in sys.argv[2:]:
    key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["EdDSA"])
    print(claims["submods"]["vm1"]["ear.status"])
"#;

/// joserfc, which knows RFC 9864's Ed25519, verifies against the fetched JWKS.
const JOSERFC: &str = r#"
import json, sys, urllib.request
from joserfc import jwt
from joserfc.jwk import KeySet
with urllib.request.urlopen(sys.argv[1] + "/.well-known/jwks.json") as r:
    keys = KeySet.import_key_set(json.load(r))
for token in sys.argv[2:]:
    t = jwt.decode(token, keys, algorithms=["Ed25519"])
    print(t.header["alg"], t.claims["submods"]["vm1"]["ear.status"])
"#;

fn python(script: &str, server: &Server, tokens: &[&str]) -> std::process::Output {
    Command::new(vmattest_testkit::oracle_python())
        .args(["-c", script, &server.url()])
        .args(tokens)
        .output()
        .unwrap()
}

fn header_of(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let h = jwt.split('.').next().unwrap();
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .unwrap();
    serde_json::from_slice(&b).unwrap()
}

fn jwks(server: &Server) -> serde_json::Value {
    let (status, body) = http(
        "GET",
        &format!("{}/.well-known/jwks.json", server.url()),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    json_of(&body)
}

fn rotate(server: &Server, f: &Fixture) -> serde_json::Value {
    let token = f.dir.join("admin.token");
    let url = PathBuf::from(server.url());
    let out = vmattest_env(
        &f.dir.join("home"),
        &[("VMATTEST_SERVER", &url), ("VMATTEST_TOKEN_FILE", &token)],
        &["--json", "remote", "rotate-ear-key"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    json_of(&text(&out.stdout))
}

#[test]
fn jwks_clients_verify_ears_across_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = Server::start(&state, None);
    let f = setup(&server);
    let before = round(&f);
    let h1 = header_of(&before.ear);
    assert_eq!(h1["alg"], "Ed25519", "RFC 9864 name by default: {h1}");
    let set = jwks(&server);
    assert_eq!(set["keys"].as_array().unwrap().len(), 1, "{set}");
    assert_eq!(set["keys"][0]["alg"], "Ed25519");

    let new = rotate(&server, &f);
    assert_ne!(new["kid"], h1["kid"]);
    let after = round(&f);
    let h2 = header_of(&after.ear);
    assert_eq!(h2["kid"], new["kid"]);
    let set = jwks(&server);
    let kids: Vec<&str> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(
        kids,
        [h2["kid"].as_str().unwrap(), h1["kid"].as_str().unwrap()]
    );
    assert_eq!(
        f.auditor.ear_key().unwrap().kid,
        new["kid"].as_str().unwrap()
    );
    // Oracles: jsonwebtoken, and joserfc fetching the JWKS itself.
    for ear in [&before.ear, &after.ear] {
        let claims = verify_with_jwks(&set, ear);
        assert_eq!(claims["submods"]["vm1"]["ear.status"], "affirming");
    }
    let out = python(JOSERFC, &server, &[&before.ear, &after.ear]);
    assert!(out.status.success(), "joserfc: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Ed25519 affirming\nEd25519 affirming\n");

    // The retired key survives a restart, private to the server's user.
    server.kill();
    let server = Server::start(&state, None);
    assert_eq!(jwks(&server), set);
    let retired = state.join(format!("ear-keys/{}.pub.pem", h1["kid"].as_str().unwrap()));
    let mode = std::fs::metadata(&retired).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let out = python(JOSERFC, &server, &[&before.ear]);
    assert!(out.status.success(), "joserfc: {}", text(&out.stderr));
}

#[test]
fn pyjwkclient_verifies_legacy_named_ears_across_a_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = Server::start_with(&state, None, &["--jose-alg-names", "legacy"]);
    let f = setup(&server);
    let before = round(&f);
    assert_eq!(header_of(&before.ear)["alg"], "EdDSA");
    let old_kid = header_of(&before.ear)["kid"].as_str().unwrap().to_owned();
    rotate(&server, &f);
    let after = round(&f);
    let out = python(PYJWT, &server, &[&before.ear, &after.ear]);
    assert!(out.status.success(), "PyJWKClient: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "affirming\naffirming\n");
    // Once the retired key is removed, PyJWKClient finds no key for the old EAR.
    server.kill();
    std::fs::remove_file(state.join(format!("ear-keys/{old_kid}.pub.pem"))).unwrap();
    let server = Server::start_with(&state, None, &["--jose-alg-names", "legacy"]);
    let out = python(PYJWT, &server, &[&after.ear]);
    assert!(out.status.success(), "PyJWKClient: {}", text(&out.stderr));
    let out = python(PYJWT, &server, &[&before.ear]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&old_kid),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn remote_takes_its_server_from_the_environment_or_a_client_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), None);
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".config/vmattest")).unwrap();
    let admin = dir.path().join("admin.token");
    std::fs::write(&admin, server.admin_token()).unwrap();
    let url = PathBuf::from(server.url());
    let missing = dir.path().join("missing.token");

    // Environment.
    let env = [
        ("VMATTEST_SERVER", url.as_path()),
        ("VMATTEST_TOKEN_FILE", &admin),
    ];
    let out = vmattest_env(&home, &env, &["remote", "tokens"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Public calls never read the token, so a missing token file does not stop them.
    let no_token = [
        ("VMATTEST_SERVER", url.as_path()),
        ("VMATTEST_TOKEN_FILE", &missing),
    ];
    for call in [
        &["remote", "health"][..],
        &["remote", "jwks"],
        &["remote", "ear-key"],
    ] {
        let out = vmattest_env(&home, &no_token, call);
        assert!(out.status.success(), "{call:?}: {}", text(&out.stderr));
    }
    let out = vmattest_env(&home, &no_token, &["remote", "tokens"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("missing.token"),
        "{}",
        text(&out.stderr)
    );

    // `token --out`: a new 0600 file, the token never on stdout; an existing file is refused
    // before any token is issued.
    let out_file = dir.path().join("auditor.token");
    let token_out = || {
        vmattest_env(
            &home,
            &env,
            &[
                "remote",
                "token",
                "--role",
                "auditor",
                "--out",
                out_file.to_str().unwrap(),
            ],
        )
    };
    let out = token_out();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        !text(&out.stdout).contains(secret.trim()),
        "{}",
        text(&out.stdout)
    );
    let mode = std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let count = || {
        let out = vmattest_env(&home, &env, &["--json", "remote", "tokens"]);
        text(&out.stdout).lines().count()
    };
    let tokens = count();
    let out = token_out();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("auditor.token"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(count(), tokens, "no token issued for a refused --out");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), secret);

    // The client file, with a token path relative to the file; flags still win.
    std::fs::copy(&out_file, home.join(".config/vmattest/auditor.token")).unwrap();
    let conf = home.join(".config/vmattest/client.toml");
    std::fs::write(
        &conf,
        format!(
            "server = \"{}\"\ntoken_file = \"auditor.token\"\n",
            server.url()
        ),
    )
    .unwrap();
    let out = vmattest_env(&home, &[], &["remote", "alerts"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = vmattest_env(&home, &[], &["remote", "tokens"]);
    assert!(!out.status.success(), "an auditor may not list tokens");
    let out = vmattest_env(
        &home,
        &[],
        &["remote", "--token-file", admin.to_str().unwrap(), "tokens"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A typo in the file is named with the file.
    std::fs::write(&conf, "sever = \"http://x\"\n").unwrap();
    let out = vmattest_env(&home, &[], &["remote", "health"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("client.toml") && err.contains("sever"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
