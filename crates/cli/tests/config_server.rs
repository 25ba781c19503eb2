//! Reference configurations on a real server process: an admin stores a reference, the agent
//! posts a measured configuration (the opening and the host-signed statement of its root), and
//! the server answers with every mismatch and a verdict JWT that a standard JWT library verifies
//! with the published EAR key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::server::{Server, http, json_of, register_vms, token, verify_jwt};
use vmattest_agent::evidence::sign;
use vmattest_api::{NewHost, Role};
use vmattest_client::Client;
use vmattest_core::config::{ConfigList, ConfigOpening, ConfigParam};
use vmattest_host::now;
use vmattest_sign::{SecretKey, SigAlg, Signer};

const REFERENCE: &str = r#"
strict = false
[expect]
memory_mib = 1024
"kernel.sha256" = "5f1d2c0e8b7a6f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766"
[range]
vcpus = [1, 4]
[set]
machine = ["q35", "pc"]
[absent]
names = ["firmware.sha256"]
"#;

struct Fixture {
    server: Server,
    host_key: SecretKey,
    admin: String,
    agent: String,
    auditor: String,
    other_agent: String,
    _dir: tempfile::TempDir,
}

fn setup(db: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"), db);
    let admin_token = server.admin_token();
    let admin = Client::new(&server.url(), Some(admin_token.clone())).unwrap();
    let host_key = SecretKey::generate(SigAlg::Ed25519).unwrap();
    for (name, key) in [
        ("host1", host_key.public_key()),
        (
            "host2",
            SecretKey::generate(SigAlg::Ed25519).unwrap().public_key(),
        ),
    ] {
        admin
            .add_host(&NewHost {
                name: name.into(),
                public_key_pem: key.to_pem(),
                tpm: None,
                group: None,
            })
            .unwrap();
    }
    register_vms(&admin, "host1", &["vm1", "vm2"]);
    Fixture {
        agent: token(&admin, Role::Agent, Some("host1")),
        other_agent: token(&admin, Role::Agent, Some("host2")),
        auditor: token(&admin, Role::Auditor, None),
        admin: admin_token,
        server,
        host_key,
        _dir: dir,
    }
}

fn good_params() -> Vec<ConfigParam> {
    [
        ("memory_mib", "1024"),
        (
            "kernel.sha256",
            "5f1d2c0e8b7a6f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766",
        ),
        ("vcpus", "2"),
        ("machine", "q35"),
        ("boot", "kernel"),
        ("cmdline", "console=ttyS0"),
    ]
    .iter()
    .map(|(n, v)| ConfigParam::new(*n, *v))
    .collect()
}

/// `params` with `name` set to `value` (None: removed).
fn with(name: &str, value: Option<&str>) -> Vec<ConfigParam> {
    let mut p: Vec<ConfigParam> = good_params()
        .into_iter()
        .filter(|p| p.name != name)
        .collect();
    if let Some(v) = value {
        p.push(ConfigParam::new(name, v));
    }
    p
}

fn opening(params: Vec<ConfigParam>) -> ConfigOpening {
    let list = ConfigList::new(params).unwrap();
    let salts = (0..list.len())
        .map(|_| {
            let mut s = vec![0u8; 16];
            getrandom::fill(&mut s).unwrap();
            s
        })
        .collect();
    list.salted(salts).unwrap()
}

/// The request body: `opening` with a statement of `statement_of`'s root for `vm` by `key`.
fn request(
    opening: &ConfigOpening,
    statement_of: &ConfigOpening,
    vm: &str,
    key: &SecretKey,
) -> serde_json::Value {
    let st = statement_of.statement(vm, now(), &[], vec![key.key_id()]);
    let signed = sign(st, key).unwrap();
    serde_json::json!({
        "opening": hex::encode(opening.encode()),
        "statement": hex::encode(signed.encode().unwrap()),
    })
}

fn call(
    f: &Fixture,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (status, text) = http(
        method,
        &format!("{}{path}", f.server.url()),
        Some(token),
        body.map(|b| ("application/json", b.to_string().into_bytes())),
    );
    (status, json_of(&text))
}

fn verify(f: &Fixture, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    call(f, "POST", "/v1/vms/vm1/config/verify", token, Some(body))
}

fn put_reference(f: &Fixture, toml: &str) -> (u16, serde_json::Value) {
    call(
        f,
        "PUT",
        "/v1/vms/vm1/reference-config",
        &f.admin,
        Some(serde_json::json!({ "toml": toml })),
    )
}

fn mismatch_names(r: &serde_json::Value) -> Vec<String> {
    r["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn measured_configs_are_checked_against_the_reference_on_sqlite() {
    check_flow(None);
}

#[test]
fn measured_configs_are_checked_against_the_reference_on_postgres() {
    let pg = vmattest_testkit::Postgres::start()
        .expect("PostgreSQL (scripts/install-deps.sh installs it)");
    check_flow(Some(&pg.url()));
}

fn check_flow(db: Option<&str>) {
    let f = setup(db);
    let good = opening(good_params());

    // No reference yet: 404 on GET, 409 on verify.
    let (s, b) = call(&f, "GET", "/v1/vms/vm1/reference-config", &f.admin, None);
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    let (s, b) = verify(&f, &f.agent, request(&good, &good, "vm1", &f.host_key));
    assert_eq!((s, b["code"].as_str()), (409, Some("no_reference")), "{b}");

    // A bad reference is refused, naming the problem.
    let (s, b) = put_reference(&f, "[range]\nvcpus = [4, 1]\n");
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid")), "{b}");
    assert!(b["error"].as_str().unwrap().contains("vcpus"), "{b}");
    let (s, b) = put_reference(&f, "[expect]\nvcpus = 1\n[extra]\n");
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid")), "{b}");
    assert!(b["error"].as_str().unwrap().contains("extra"), "{b}");
    let (s, b) = call(
        &f,
        "PUT",
        "/v1/vms/nosuch/reference-config",
        &f.admin,
        Some(serde_json::json!({ "toml": REFERENCE })),
    );
    assert_eq!(s, 404, "{b}");

    let (s, b) = put_reference(&f, REFERENCE);
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["vm"].as_str(), b["toml"].as_str()),
        (Some("vm1"), Some(REFERENCE))
    );
    for token in [&f.admin, &f.auditor, &f.agent] {
        let (s, b) = call(&f, "GET", "/v1/vms/vm1/reference-config", token, None);
        assert_eq!((s, b["toml"].as_str()), (200, Some(REFERENCE)), "{b}");
    }

    // A matching configuration: ok, and the verdict JWT verifies.
    let (s, r) = verify(&f, &f.agent, request(&good, &good, "vm1", &f.host_key));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["vm"], "vm1");
    assert_eq!(r["root"], good.root().to_hex());
    assert_eq!(r["mismatches"], serde_json::json!([]));
    let claims = verify_jwt(&f.server, r["result"].as_str().unwrap());
    assert_eq!(claims["vmattest.vm"], "vm1");
    assert_eq!(claims["vmattest.config-root"], good.root().to_hex());
    assert_eq!(claims["vmattest.config-ok"], true);
    assert_eq!(claims["vmattest.mismatches"], serde_json::json!([]));
    assert!(claims["iat"].as_i64().unwrap() > 0);
    // The admin may check too.
    let (s, r) = verify(&f, &f.admin, request(&good, &good, "vm1", &f.host_key));
    assert_eq!((s, &r["ok"]), (200, &serde_json::json!(true)), "{r}");

    // Each rule, broken alone, is named.
    let cases = [
        (
            with("memory_mib", Some("2048")),
            "memory_mib",
            "= 1024",
            "2048",
        ),
        (with("vcpus", Some("8")), "vcpus", "1 to 4", "8"),
        (with("vcpus", Some("many")), "vcpus", "1 to 4", "many"),
        (
            with("machine", Some("virt")),
            "machine",
            "one of [q35, pc]",
            "virt",
        ),
        (
            with("firmware.sha256", Some(&"ab".repeat(32))),
            "firmware.sha256",
            "absent",
            &"ab".repeat(32),
        ),
        (with("memory_mib", None), "memory_mib", "= 1024", "absent"),
    ];
    for (params, name, expected, found) in cases {
        let o = opening(params);
        let (s, r) = verify(&f, &f.agent, request(&o, &o, "vm1", &f.host_key));
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(
            r["mismatches"],
            serde_json::json!([{ "name": name, "expected": expected, "found": found }]),
            "{name}"
        );
        let claims = verify_jwt(&f.server, r["result"].as_str().unwrap());
        assert_eq!(claims["vmattest.config-ok"], false);
        assert_eq!(claims["vmattest.mismatches"], r["mismatches"]);
        assert_eq!(claims["vmattest.config-root"], o.root().to_hex());
    }

    // Several at once, sorted by name.
    let mut params = with("memory_mib", Some("512"));
    params.retain(|p| p.name != "vcpus" && p.name != "machine");
    params.push(ConfigParam::new("vcpus", "0"));
    params.push(ConfigParam::new("machine", "isapc"));
    let o = opening(params);
    let (_, r) = verify(&f, &f.agent, request(&o, &o, "vm1", &f.host_key));
    assert_eq!(
        mismatch_names(&r),
        ["machine", "memory_mib", "vcpus"],
        "{r}"
    );

    // Strict mode: a parameter the reference does not name is a mismatch.
    let (s, _) = put_reference(&f, &REFERENCE.replace("strict = false", "strict = true"));
    assert_eq!(s, 200);
    let (_, r) = verify(&f, &f.agent, request(&good, &good, "vm1", &f.host_key));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(mismatch_names(&r), ["boot", "cmdline"], "{r}");
    assert_eq!(r["mismatches"][0]["expected"], "unexpected");
    assert_eq!(r["mismatches"][1]["found"], "console=ttyS0");
    let strict_ok = REFERENCE
        .replace("strict = false", "strict = true")
        .replace(
            "[range]",
            "boot = \"kernel\"\ncmdline = \"console=ttyS0\"\n[range]",
        );
    let (s, b) = put_reference(&f, &strict_ok);
    assert_eq!(s, 200, "{b}");
    let (_, r) = verify(&f, &f.agent, request(&good, &good, "vm1", &f.host_key));
    assert_eq!(r["ok"], true, "{r}");
}

#[test]
fn forged_or_mismatched_statements_are_refused() {
    let f = setup(None);
    let (s, _) = put_reference(&f, REFERENCE);
    assert_eq!(s, 200);
    let good = opening(good_params());
    let code = |(s, b): (u16, serde_json::Value)| (s, b["code"].as_str().unwrap_or("").to_owned());

    // The opening's root is not the statement's: another salt, or another value.
    let other = opening(good_params());
    assert_eq!(
        code(verify(
            &f,
            &f.agent,
            request(&other, &good, "vm1", &f.host_key)
        )),
        (400, "root_mismatch".into())
    );
    let changed = opening(with("memory_mib", Some("4096")));
    assert_eq!(
        code(verify(
            &f,
            &f.agent,
            request(&changed, &good, "vm1", &f.host_key)
        )),
        (400, "root_mismatch".into())
    );
    // Signed by a key that is not the host's.
    let stranger = SecretKey::generate(SigAlg::Ed25519).unwrap();
    assert_eq!(
        code(verify(
            &f,
            &f.agent,
            request(&good, &good, "vm1", &stranger)
        )),
        (400, "unknown_key".into())
    );
    // A flipped signature byte.
    let st = good.statement("vm1", now(), &[], vec![f.host_key.key_id()]);
    let mut signed = sign(st, &f.host_key).unwrap();
    signed.signatures[0].signature[0] ^= 1;
    let body = serde_json::json!({
        "opening": hex::encode(good.encode()),
        "statement": hex::encode(signed.encode().unwrap()),
    });
    assert_eq!(
        code(verify(&f, &f.agent, body)),
        (400, "bad_signature".into())
    );
    // A statement for another VM of the same host.
    let (s, b) = verify(&f, &f.agent, request(&good, &good, "vm2", &f.host_key));
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid")), "{b}");
    assert!(b["error"].as_str().unwrap().contains("vm2"), "{b}");
    // Malformed parts, each named.
    let mut body = request(&good, &good, "vm1", &f.host_key);
    body["statement"] = "zz".into();
    let (s, b) = verify(&f, &f.agent, body);
    assert_eq!((s, b["code"].as_str()), (400, Some("malformed")), "{b}");
    assert!(b["error"].as_str().unwrap().starts_with("statement"), "{b}");
    let mut body = request(&good, &good, "vm1", &f.host_key);
    body["opening"] = hex::encode(b"not an opening").into();
    let (s, b) = verify(&f, &f.agent, body);
    assert_eq!((s, b["code"].as_str()), (400, Some("malformed")), "{b}");
    assert!(b["error"].as_str().unwrap().starts_with("opening"), "{b}");
    let (s, b) = verify(&f, &f.agent, serde_json::json!({ "opening": "" }));
    assert_eq!((s, b["code"].as_str()), (400, Some("malformed")), "{b}");

    // Roles: the auditor may read the reference but not check; another host's agent neither;
    // only the admin may store a reference.
    let ok_body = request(&good, &good, "vm1", &f.host_key);
    for token in [&f.auditor, &f.other_agent] {
        let (s, b) = verify(&f, token, ok_body.clone());
        assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")), "{b}");
    }
    let (s, _) = call(
        &f,
        "GET",
        "/v1/vms/vm1/reference-config",
        &f.other_agent,
        None,
    );
    assert_eq!(s, 403);
    for token in [&f.agent, &f.auditor] {
        let (s, b) = call(
            &f,
            "PUT",
            "/v1/vms/vm1/reference-config",
            token,
            Some(serde_json::json!({ "toml": REFERENCE })),
        );
        assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")), "{b}");
    }
    let (s, _) = http(
        "POST",
        &format!("{}/v1/vms/vm1/config/verify", f.server.url()),
        None,
        Some(("application/json", ok_body.to_string().into_bytes())),
    );
    assert_eq!(s, 401);

    // Checks are counted.
    let (_, metrics) = http(
        "GET",
        &format!("{}/metrics", f.server.url()),
        Some(&f.admin),
        None,
    );
    assert!(
        metrics.contains("vmattest_config_checks_total{outcome=\"root_mismatch\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vmattest_config_checks_total{outcome=\"unknown_key\"} 1"),
        "{metrics}"
    );
}
