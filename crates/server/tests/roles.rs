//! The role matrix, in process: every protected endpoint answers 401 without a token or with
//! an unknown one, and 403 to each role it refuses, through `app(state)` with `oneshot`
//! against a real SQLite database file. Role checks run before a body is parsed, so the
//! bodies here need only reach the handler. crates/cli/tests/server.rs keeps one check of the
//! same over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt as _;
use vmattest_api::{ErrorBody, ErrorCode, MAX_BODY_BYTES, TokenInfo};
use vmattest_server::listen::Limits;
use vmattest_server::{Config, Settings, app, prepare};
use vmattest_sign::{SecretKey, SigAlg, Signer as _};

const POLICY: &str = r#"
name = "file-guest"
hash = "sha256"
schedule_secs = 5

[[region]]
name = "code"
start = 0x0
len = 0x8000
weight = 10
critical = true
kernel_code = true
"#;

type Body_ = Option<(&'static str, Vec<u8>)>;

struct Server {
    _dir: tempfile::TempDir,
    app: Router,
    admin: String,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            db_url: format!("sqlite://{}", state_dir.join("db.sqlite").display()),
            state_dir: state_dir.clone(),
            admin_token_file: state_dir.join("admin.token"),
            ear_alg: SigAlg::Ed25519,
            alg_names: vmattest_server::AlgNames::default(),
            tls: None,
            settings: Settings::default(),
            limits: Limits::default(),
        };
        let state = prepare(&config).await.unwrap();
        let admin = std::fs::read_to_string(&config.admin_token_file).unwrap();
        Server {
            _dir: dir,
            app: app(state),
            admin: admin.trim().to_owned(),
        }
    }

    /// One request through the router: status and body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Body_,
    ) -> (u16, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some((ct, bytes)) => req.header("content-type", ct).body(Body::from(bytes)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    /// A successful JSON call by the admin.
    async fn admin_json(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let (s, b) = self.call(method, path, Some(&self.admin), json(body)).await;
        assert_eq!(s, 200, "{method} {path}: {}", String::from_utf8_lossy(&b));
        serde_json::from_slice(&b).unwrap()
    }

    async fn token(&self, role: &str, host: Option<&str>) -> String {
        let t = self
            .admin_json(
                "POST",
                "/v1/tokens",
                serde_json::json!({"role": role, "host": host}),
            )
            .await;
        t["token"].as_str().unwrap().to_owned()
    }
}

fn json(v: serde_json::Value) -> Body_ {
    Some(("application/json", v.to_string().into_bytes()))
}

fn octets() -> Body_ {
    Some(("application/octet-stream", b"x".to_vec()))
}

/// The typed code of an error response.
fn code(body: &[u8]) -> ErrorCode {
    serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
        .code
}

fn pem() -> String {
    SecretKey::generate(SigAlg::Ed25519)
        .unwrap()
        .public_key()
        .to_pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_checks_token_and_role() {
    let s = Server::start().await;
    for host in ["host1", "host2"] {
        s.admin_json(
            "POST",
            "/v1/hosts",
            serde_json::json!({"name": host, "public_key_pem": pem()}),
        )
        .await;
    }
    let policy = s
        .admin_json("POST", "/v1/policies", serde_json::json!({"toml": POLICY}))
        .await;
    let pid = policy["id"].as_str().unwrap().to_owned();
    s.admin_json(
        "POST",
        "/v1/vms",
        serde_json::json!({"name": "vm1", "host": "host1", "policy_id": pid,
            "approved_subsets": ["all"], "threshold": 90}),
    )
    .await;
    let admin = s.admin.clone();
    let agent = s.token("agent", Some("host1")).await;
    let auditor = s.token("auditor", None).await;
    // An agent of another host, which may not act for vm1.
    let other_agent = s.token("agent", Some("host2")).await;

    // (method, path, body, tokens that get 403)
    let cases: Vec<(&str, String, Body_, Vec<&str>)> = vec![
        ("GET", "/metrics".into(), None, vec![&agent]),
        (
            "POST",
            "/v1/tokens".into(),
            json(serde_json::json!({"role": "auditor"})),
            vec![&agent, &auditor],
        ),
        (
            "POST",
            "/v1/hosts".into(),
            json(serde_json::json!({"name": "h", "public_key_pem": ""})),
            vec![&agent, &auditor],
        ),
        ("GET", "/v1/tokens".into(), None, vec![&agent, &auditor]),
        (
            "DELETE",
            "/v1/tokens/0123456789abcdef".into(),
            None,
            vec![&agent, &auditor],
        ),
        ("GET", "/v1/hosts".into(), None, vec![&agent]),
        (
            "POST",
            "/v1/hosts/host1/challenge".into(),
            None,
            vec![&auditor, &other_agent],
        ),
        (
            "POST",
            "/v1/hosts/host1/attest".into(),
            json(serde_json::json!({})),
            vec![&admin, &auditor, &other_agent],
        ),
        (
            "GET",
            "/v1/hosts/host1/attestations".into(),
            None,
            vec![&other_agent],
        ),
        ("GET", "/v1/host-policies".into(), None, vec![&agent]),
        (
            "PUT",
            "/v1/vms/vm1/key".into(),
            json(serde_json::json!({"secret": "00"})),
            vec![&auditor, &other_agent],
        ),
        (
            "POST",
            "/v1/vms/vm1/key/release".into(),
            json(serde_json::json!({})),
            vec![&admin, &auditor],
        ),
        (
            "PUT",
            "/v1/host-policies/g".into(),
            json(serde_json::json!({"pcrs": {}})),
            vec![&agent, &auditor],
        ),
        (
            "DELETE",
            "/v1/host-policies/g".into(),
            None,
            vec![&agent, &auditor],
        ),
        (
            "POST",
            "/v1/policies".into(),
            json(serde_json::json!({"toml": POLICY})),
            vec![&agent, &auditor],
        ),
        ("GET", format!("/v1/policies/{pid}"), None, vec![]),
        (
            "POST",
            "/v1/vms".into(),
            json(
                serde_json::json!({"name": "x", "host": "host1", "policy_id": pid,
                "approved_subsets": ["all"], "threshold": 1}),
            ),
            vec![&agent, &auditor],
        ),
        ("GET", "/v1/vms/vm1".into(), None, vec![&other_agent]),
        (
            "POST",
            "/v1/vms/vm1/baseline".into(),
            json(serde_json::json!({})),
            vec![&agent, &auditor],
        ),
        (
            "PUT",
            "/v1/vms/vm1/baseline/1/bytes/code".into(),
            octets(),
            vec![&agent, &auditor],
        ),
        (
            "PUT",
            "/v1/vms/vm1/policy".into(),
            json(serde_json::json!({"policy_id": pid})),
            vec![&agent, &auditor],
        ),
        (
            "POST",
            "/v1/vms/vm1/challenge".into(),
            None,
            vec![&auditor, &other_agent],
        ),
        (
            "POST",
            "/v1/evidence".into(),
            octets(),
            vec![&admin, &auditor],
        ),
        ("GET", "/v1/vms/vm1/results".into(), None, vec![&agent]),
        ("GET", "/v1/results/1".into(), None, vec![&agent]),
        (
            "POST",
            "/v1/results/1/locate".into(),
            json(serde_json::json!({})),
            vec![&admin, &auditor],
        ),
        (
            "POST",
            "/v1/results/1/pages".into(),
            json(serde_json::json!({})),
            vec![&admin, &auditor],
        ),
        ("GET", "/v1/alerts".into(), None, vec![&agent]),
        (
            "POST",
            "/v1/alerts/1/ack".into(),
            None,
            vec![&agent, &auditor],
        ),
        (
            "POST",
            "/v1/ear-key/rotate".into(),
            None,
            vec![&agent, &auditor],
        ),
        (
            "POST",
            "/v1/vms/vm1/reports".into(),
            octets(),
            vec![&admin, &auditor, &other_agent],
        ),
        ("GET", "/v1/vms/vm1/reports".into(), None, vec![&agent]),
        (
            "POST",
            "/v1/vms/vm1/snapshot-requests".into(),
            json(serde_json::json!({"seq": 0})),
            vec![&agent],
        ),
        (
            "GET",
            "/v1/vms/vm1/snapshot-requests".into(),
            None,
            vec![&other_agent],
        ),
        (
            "PUT",
            "/v1/vms/vm1/reference-config".into(),
            json(serde_json::json!({"toml": ""})),
            vec![&agent, &auditor],
        ),
        (
            "GET",
            "/v1/vms/vm1/reference-config".into(),
            None,
            vec![&other_agent],
        ),
        (
            "POST",
            "/v1/vms/vm1/config/verify".into(),
            json(serde_json::json!({})),
            vec![&auditor, &other_agent],
        ),
    ];
    let documented = vmattest_server::openapi::ROUTES.len() - 4; // less the public ones
    assert_eq!(cases.len(), documented, "every protected route is covered");
    for (method, path, body, forbidden) in cases {
        let (st, b) = s.call(method, &path, None, body.clone()).await;
        assert_eq!(
            (st, code(&b)),
            (401, ErrorCode::Unauthorized),
            "{method} {path} without a token"
        );
        let (st, b) = s.call(method, &path, Some("vmat_0000"), body.clone()).await;
        assert_eq!(
            (st, code(&b)),
            (401, ErrorCode::Unauthorized),
            "{method} {path} with an unknown token"
        );
        for token in forbidden {
            let (st, b) = s.call(method, &path, Some(token), body.clone()).await;
            assert_eq!(
                (st, code(&b)),
                (403, ErrorCode::Forbidden),
                "{method} {path}: {}",
                String::from_utf8_lossy(&b)
            );
        }
    }
    for public in ["/v1/health", "/v1/openapi.json", "/v1/ear-key"] {
        let (st, _) = s.call("GET", public, None, None).await;
        assert_eq!(st, 200, "{public}");
    }
}

/// Errors that axum itself raises (no such route, a method the route lacks, a body over the
/// limit) carry the JSON error body and a typed code like every other error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_rejections_carry_typed_codes() {
    let s = Server::start().await;
    let admin = s.admin.clone();
    let (st, b) = s.call("GET", "/v1/nothing-here", Some(&admin), None).await;
    assert_eq!((st, code(&b)), (404, ErrorCode::NotFound));
    let (st, b) = s.call("PUT", "/v1/tokens", Some(&admin), None).await;
    assert_eq!((st, code(&b)), (405, ErrorCode::MethodNotAllowed));
    let big = vec![b'{'; MAX_BODY_BYTES + 1];
    let (st, b) = s
        .call(
            "POST",
            "/v1/policies",
            Some(&admin),
            Some(("application/json", big)),
        )
        .await;
    assert_eq!((st, code(&b)), (413, ErrorCode::TooLarge));
    let (st, b) = s.call("GET", "/v1/results/abc", Some(&admin), None).await;
    assert_eq!((st, code(&b)), (400, ErrorCode::Invalid));
}

/// API times are RFC 3339 strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_are_rfc3339() {
    let s = Server::start().await;
    let (st, b) = s
        .call("GET", "/v1/tokens", Some(&s.admin.clone()), None)
        .await;
    assert_eq!(st, 200);
    let raw: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let created = raw[0]["created"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.contains('T'), "{created}");
    let tokens: Vec<TokenInfo> = serde_json::from_slice(&b).unwrap();
    assert_eq!(tokens[0].created.to_string(), created);
}
