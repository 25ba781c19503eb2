//! The attestation server as a real process over loopback HTTP, with SQLite and PostgreSQL:
//! registration, appraisal against a golden baseline from a verified snapshot, EAR checked
//! with a standard JWT library, alerts and webhooks, every refusal, roles, and restarts.
//! Guest RAM is a plain file here; tests/runtime.rs attests a real QEMU guest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::fixture::{Fixture, HOOK_SECRET, evidence_for, flip_code_byte, refused, setup};
use common::server::{Server, http, json_of, verify_jwt};
use common::vmattest;
use vmattest_agent::evidence::sign;
use vmattest_agent::run::check_challenge;
use vmattest_api::{AttestationResult, ErrorCode, NewToken, Role};
use vmattest_client::Client;
use vmattest_core::attest::Evidence;
use vmattest_core::record::UnixTime;
use vmattest_sign::{PublicKey, SecretKey, SigAlg, Signer as _};

fn attestation_flow(server: &Server) {
    let f = setup(server);
    // A clean guest.
    let r = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    assert_eq!(
        (r.score, r.status.as_str(), r.alert),
        (100, "affirming", false),
        "{r:?}"
    );
    let claims = verify_jwt(server, &r.ear);
    let sub = &claims["submods"]["vm1"];
    assert_eq!(sub["ear.status"], "affirming");
    assert_eq!(sub["ear.trustworthiness-vector"]["executables"], 2);
    assert_eq!(claims["eat_profile"], "tag:github.com,2023:veraison/ear");
    assert_eq!(
        sub["ear.appraisal-policy-id"],
        format!("vmattest:policy:{}", f.policy.id())
    );

    // Replayed evidence.
    let bytes = evidence_for(&f, &f.host_key);
    f.agent.evidence(&bytes).unwrap();
    let e = refused(f.agent.evidence(&bytes), ErrorCode::ReplayedNonce);
    assert!(e.contains("already used"), "{e}");
    // The same evidence posted concurrently: exactly one post is accepted.
    let bytes = evidence_for(&f, &f.host_key);
    let outcomes: Vec<Result<AttestationResult, Option<ErrorCode>>> = std::thread::scope(|sc| {
        let posts: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| f.agent.evidence(&bytes).map_err(|e| e.code().cloned())))
            .collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(
            |o| o.as_ref().is_ok() || o.as_ref().err() == Some(&Some(ErrorCode::ReplayedNonce))
        ),
        "{outcomes:?}"
    );
    // Unknown key.
    let other = SecretKey::generate(SigAlg::Ed25519).unwrap();
    refused(
        f.agent.evidence(&evidence_for(&f, &other)),
        ErrorCode::UnknownKey,
    );
    // Stale timestamp, and an unapproved subset, each on a fresh nonce.
    for (code, subset, age) in [
        (ErrorCode::Stale, "all", 3600),
        (ErrorCode::UnapprovedSubset, "code", 0),
    ] {
        let c = f.agent.challenge("vm1").unwrap();
        let (policy, nonce) = check_challenge("vm1", &c).unwrap();
        let ram = std::fs::read(&f.ram).unwrap();
        let m = vmattest_agent::measure(&ram, &policy, subset, &nonce).unwrap();
        let now = vmattest_host::now();
        let ev = Evidence {
            vm: "vm1".into(),
            time: UnixTime {
                secs: now.secs - age,
                nanos: 0,
            },
            nonce,
            alg: policy.alg,
            policy_id: policy.id(),
            subset: subset.into(),
            regions: m.regions,
            kernel_code: m.kernel_code,
            kernel_code_sites: m.kernel_code_sites,
            agent_version: "test".into(),
            key_ids: vec![f.host_key.key_id()],
        };
        let bytes = sign(ev, &f.host_key).unwrap().encode().unwrap();
        refused(f.agent.evidence(&bytes), code);
    }
    // A nonce this server never issued.
    let mut forged = vmattest_core::attest::SignedEvidence::decode(&evidence_for(&f, &f.host_key))
        .unwrap()
        .value()
        .clone();
    forged.nonce = vec![0x42; 48];
    let bytes = sign(forged, &f.host_key).unwrap().encode().unwrap();
    refused(f.agent.evidence(&bytes), ErrorCode::UnknownNonce);
    // Garbage and wrong roles.
    refused(f.agent.evidence(b"not evidence"), ErrorCode::Malformed);
    let (status, body) = http(
        "POST",
        &format!("{}/v1/evidence", server.url()),
        Some(&f.auditor_token),
        Some(("application/octet-stream", evidence_for(&f, &f.host_key))),
    );
    assert_eq!(status, 403, "{body}");

    // Kernel code changed: contraindicated, alert, signed webhook.
    flip_code_byte(&f.ram);
    let r = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    assert_eq!(
        (r.score, r.status.as_str(), r.alert),
        (0, "contraindicated", true),
        "{r:?}"
    );
    assert_eq!(r.trust_vector["executables"], 96);
    let claims = verify_jwt(server, &r.ear);
    assert_eq!(claims["submods"]["vm1"]["ear.status"], "contraindicated");
    let (headers, body) = f.hook.wait_for(1, Duration::from_secs(20));
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    // HMAC oracle: Python's hmac module.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
            HOOK_SECRET,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(&body)?;
            c.wait_with_output()
        })
        .unwrap();
    let want = format!("sha256={}", String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(header("x-vmattest-signature"), want);
    let ear_pem = json_of(&http("GET", &format!("{}/v1/ear-key", server.url()), None, None).1)
        ["public_key_pem"]
        .as_str()
        .unwrap()
        .to_string();
    let pk = PublicKey::from_pem(&ear_pem).unwrap();
    let mut msg = b"vmattest webhook v1\0".to_vec();
    msg.extend_from_slice(&body);
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header("x-vmattest-server-signature"))
        .unwrap();
    pk.verify(&msg, &sig)
        .expect("server signature over the webhook body");
    let hook: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(hook["alert"]["vm"], "vm1");
    assert_eq!(hook["ear"], serde_json::Value::String(r.ear.clone()));
    // The auditor sees results and the delivered alert.
    let results = f.auditor.results("vm1", Some(100)).unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].id, r.id);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alerts = f.auditor.alerts(Some("vm1"), false).unwrap();
        assert_eq!(alerts.len(), 1);
        if alerts[0].webhook_delivered {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alert never marked delivered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = f.auditor.metrics().unwrap();
    assert!(
        metrics.contains("vmattest_evidence_total{status=\"contraindicated\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vmattest_evidence_refused_total{code=\"replayed_nonce\"} 8"),
        "{metrics}"
    );
    let _ = (&f.admin, &f.admin_token, &f.agent_token, &f.dir);
}

#[test]
fn attestation_flow_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), None);
    attestation_flow(&server);
}

#[test]
fn attestation_flow_on_postgres() {
    let pg = vmattest_testkit::Postgres::start()
        .expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), Some(&pg.url()));
    attestation_flow(&server);
}

/// A nonce issued before a crash is still good after it; results and alerts survive.
fn restart_loses_nothing(state: &Path, db: Option<&str>) {
    let mut server = Server::start(state, db);
    let f = setup(&server);
    let first = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    flip_code_byte(&f.ram);
    let alerted = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    assert!(alerted.alert);
    // Challenge, then SIGKILL the server before the evidence arrives.
    let pending = evidence_for_pending(&f);
    server.kill();
    let server = Server::start(state, db);
    let agent = Client::new(&server.url(), Some(f.agent_token.clone())).unwrap();
    let auditor = Client::new(&server.url(), Some(f.auditor_token.clone())).unwrap();
    let after = agent.evidence(&pending).unwrap();
    assert_eq!(after.status, "contraindicated");
    let ids: Vec<i64> = auditor
        .results("vm1", Some(10))
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![after.id, alerted.id, first.id]);
    // Both alerting results (one before the crash, one after) count in one alert.
    let alerts = auditor.alerts(Some("vm1"), false).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].count, 2, "{alerts:?}");
    assert_eq!(alerts[0].last_result_id, after.id, "{alerts:?}");
    // A replay after the restart is still named as one.
    refused(agent.evidence(&pending), ErrorCode::ReplayedNonce);
}

/// Evidence for a challenge issued now, to be posted later.
fn evidence_for_pending(f: &Fixture) -> Vec<u8> {
    evidence_for(f, &f.host_key)
}

#[test]
fn restart_mid_run_loses_nothing_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    restart_loses_nothing(&dir.path().join("state"), None);
}

#[test]
fn restart_mid_run_loses_nothing_on_postgres() {
    let pg = vmattest_testkit::Postgres::start().expect("PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    restart_loses_nothing(&dir.path().join("state"), Some(&pg.url()));
}

/// Roles over real HTTP: one refusal of each kind, an RFC 3339 time and the public endpoints.
/// Every endpoint's role matrix is checked in process (crates/server/tests/roles.rs).
#[test]
fn tokens_and_roles_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), None);
    let admin_token = server.admin_token();
    let admin = Client::new(&server.url(), Some(admin_token.clone())).unwrap();
    let auditor = admin
        .create_token(&NewToken {
            role: Role::Auditor,
            host: None,
        })
        .unwrap()
        .token;
    let url = format!("{}/v1/tokens", server.url());
    let (s, b) = http("GET", &url, None, None);
    assert_eq!((s, &json_of(&b)["code"]), (401, &"unauthorized".into()));
    let (s, b) = http("GET", &url, Some(&auditor), None);
    assert_eq!((s, &json_of(&b)["code"]), (403, &"forbidden".into()));
    let (s, b) = http("GET", &url, Some(&admin_token), None);
    assert_eq!(s, 200, "{b}");
    let created = json_of(&b)[0]["created"].as_str().unwrap().to_owned();
    assert!(created.parse::<UnixTime>().is_ok(), "{created}");
    for public in ["/v1/health", "/v1/openapi.json", "/v1/ear-key"] {
        let (s, _) = http("GET", &format!("{}{public}", server.url()), None, None);
        assert_eq!(s, 200, "{public}");
    }
    let doc = json_of(
        &http(
            "GET",
            &format!("{}/v1/openapi.json", server.url()),
            None,
            None,
        )
        .1,
    );
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/evidence"]["post"].is_object());
}

/// `--ear-alg p384`: EARs are ES384 JWTs that the JWT library verifies with the published JWK.
/// Tokens are listed by id only; a revoked token gets 401 on its next request, and the last
/// admin token cannot be revoked.
#[test]
fn revoked_tokens_stop_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), None);
    let f = setup(&server);
    let listed = f.admin.tokens().unwrap();
    let text = serde_json::to_string(&listed).unwrap();
    assert!(
        !text.contains(&f.agent_token),
        "a listing never shows a token"
    );
    let agent = listed
        .iter()
        .find(|t| t.role == Role::Agent)
        .expect("the agent token is listed");
    assert_eq!(agent.host.as_deref(), Some("host1"));
    let url = format!("{}/v1/vms/vm1", server.url());
    assert_eq!(http("GET", &url, Some(&f.agent_token), None).0, 200);
    // Through the CLI: one JSON line per token, then the revocation.
    let admin_file = f.dir.join("admin.token");
    std::fs::write(&admin_file, &f.admin_token).unwrap();
    let server_url = server.url();
    let remote = |args: &[&str]| {
        let mut all = vec!["remote", "--server", &server_url, "--token-file"];
        all.push(admin_file.to_str().unwrap());
        all.extend_from_slice(args);
        vmattest(all)
    };
    let lines = remote(&["tokens", "--json"]).ok().stdout;
    assert_eq!(lines.lines().count(), listed.len(), "{lines}");
    let revoked = remote(&["revoke-token", &agent.id, "--json"]).ok().json();
    assert_eq!(revoked["id"], agent.id.as_str());
    let (status, body) = http("GET", &url, Some(&f.agent_token), None);
    assert_eq!(status, 401, "{body}");
    remote(&["revoke-token", &agent.id]).fails(2, "not_found");
    let e = f.admin.revoke_token(&agent.id).unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::NotFound), "{e}");
    // The only admin token stays; once a second exists, the first may go.
    let admins: Vec<_> = f
        .admin
        .tokens()
        .unwrap()
        .into_iter()
        .filter(|t| t.role == Role::Admin)
        .collect();
    assert_eq!(admins.len(), 1);
    let e = f.admin.revoke_token(&admins[0].id).unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::LastAdmin), "{e}");
    let second = f
        .admin
        .create_token(&NewToken {
            role: Role::Admin,
            host: None,
        })
        .unwrap();
    assert_eq!(second.id.len(), 16);
    f.admin.revoke_token(&admins[0].id).unwrap();
    let (status, _) = http(
        "GET",
        &format!("{}/v1/hosts", server.url()),
        Some(&f.admin_token),
        None,
    );
    assert_eq!(status, 401);
    let (status, _) = http(
        "GET",
        &format!("{}/v1/hosts", server.url()),
        Some(&second.token),
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn es384_ears_verify_with_a_standard_jwt_library() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(&dir.path().join("state"), None, &["--ear-alg", "p384"]);
    let f = setup(&server);
    let key = json_of(&http("GET", &format!("{}/v1/ear-key", server.url()), None, None).1);
    assert_eq!(key["alg"], "ES384");
    assert_eq!(key["jwk"]["crv"], "P-384");
    let r = f.agent.evidence(&evidence_for(&f, &f.host_key)).unwrap();
    let claims = verify_jwt(&server, &r.ear);
    assert_eq!(claims["submods"]["vm1"]["ear.status"], "affirming");
    // A flipped signature byte is refused by the library.
    let mut bad = r.ear.clone().into_bytes();
    let at = bad.len() - 10;
    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key["jwk"].clone()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES384);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(&String::from_utf8(bad).unwrap(), &decoding, &v)
            .is_err()
    );
}

/// HTTPS with `--tls-cert`/`--tls-key`; clients trust it through `--ca-cert`.
#[test]
fn tls_serves_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A test CA and a server certificate it issues for 127.0.0.1.
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca_args = [
        "-subj",
        "/CN=vmattest test CA",
        "-days",
        "1",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ];
    let leaf_args = [
        "-subj",
        "/CN=localhost",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("leaf.csr"),
    ];
    let sign_args = [
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("ext"),
        "-out",
        &p("cert.pem"),
    ];
    for args in [
        [&["req", "-x509"][..], &ec, &ca_args].concat(),
        [&["req"][..], &ec, &leaf_args].concat(),
        sign_args.to_vec(),
    ] {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = Server::start_with(
        &d.join("state"),
        None,
        &["--tls-cert", &p("cert.pem"), "--tls-key", &p("key.pem")],
    );
    std::fs::write(d.join("token"), server.admin_token()).unwrap();
    let https = format!("https://{}", server.addr);
    let token = p("token");
    let ca = p("ca.pem");
    let base = [
        "--json",
        "remote",
        "--server",
        &https,
        "--token-file",
        &token,
        "--ca-cert",
        &ca,
    ];
    let health = vmattest(base.iter().chain(&["health"])).ok().json();
    assert_eq!(health["status"], "ok");
    let issued = vmattest(base.iter().chain(&["token", "--role", "auditor"]))
        .ok()
        .json();
    assert!(issued["token"].as_str().unwrap().starts_with("vmat_"));
    // Without the CA the certificate is refused; plain HTTP gets no answer.
    vmattest([
        "remote",
        "--server",
        &https,
        "--token-file",
        &token,
        "health",
    ])
    // A connection that cannot be made (here: an untrusted certificate) is exit 3.
    .fails(3, "https://");
    let plain = ureq::get(&format!("http://{}/v1/health", server.addr)).call();
    assert!(plain.is_err());
}
