//! Host attestation end to end (feature `tpm`): a host registered with its swtpm's attestation
//! key quotes its boot PCRs and the vmattest PCR over a server nonce; the server appraises the
//! quote against its group's host policy and answers with a host EAR that a standard JWT
//! library verifies. A changed PCR is named; replayed, foreign and altered quotes are refused.
//! On SQLite and on PostgreSQL.
#![cfg(feature = "tpm")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::Run;
use common::server::{Server, token, verify_jwt};
use vmattest_api::ErrorCode;
use vmattest_api::Role;
use vmattest_client::Client;
use vmattest_testkit::Swtpm;

/// `vmattest ARGS` on the swtpm at `tcti`, with its own event log.
fn run(tcti: &str, log: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .args(args)
        .env("VMATTEST_TPM_TCTI", tcti)
        .env("VMATTEST_EVENT_LOG", log)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, vmattest_client::ClientError>, code: ErrorCode) {
    let e = r.unwrap_err();
    assert_eq!(e.code(), Some(&code), "{e}");
}

fn scenario(db: Option<&str>) {
    let tpm = Swtpm::start();
    let tcti = tpm.tcti();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let log = dir.path().join("events.jsonl");
    run(&tcti, &log, &["tpm", "keygen", "--out", &p("tk.pub")]).ok();
    run(&tcti, &log, &["tpm", "ak", "--out", &p("ak")]).ok();
    vmattest_cli_keygen(&p("plain.key"));

    let server = Server::start(&dir.path().join("state"), db);
    let admin = server.admin_token();
    let add = |name: &str, extra: &[&str]| {
        let mut args = vec!["--json", "host", "add", "--name", name];
        args.extend_from_slice(extra);
        server.remote(&admin, &args).ok()
    };
    add(
        "h1",
        &["--pubkey", &p("tk.pub"), "--ak", &p("ak"), "--group", "lab"],
    );
    add("h2", &["--pubkey", &p("plain.key.pub")]);
    let c = Client::new(&server.url(), Some(admin.clone())).unwrap();
    let agent_token = token(&c, Role::Agent, Some("h1"));
    std::fs::write(p("agent.token"), &agent_token).unwrap();
    let url = server.url();
    let tf = p("agent.token");
    let attest = |args: &[&str]| {
        let mut all = vec!["--json", "remote", "--server", &url, "--token-file", &tf];
        all.extend_from_slice(&["host", "attest", "--name", "h1"]);
        all.extend_from_slice(args);
        run(&tcti, &log, &all)
    };

    // Without a policy for its group the host is appraised, with a warning naming the group.
    let r = attest(&[]).ok().json();
    assert_eq!(r["status"], "warning", "{r}");
    assert_eq!(r["mismatches"][0], "no host policy for group lab");

    // Golden values from a known-good quote, and vmattest's version in PCR 23's log.
    run(
        &tcti,
        &log,
        &[
            "tpm",
            "quote",
            "--pcr",
            "0,1,2,3,4,5,6,7",
            "--nonce",
            "00",
            "--out",
            &p("golden.json"),
        ],
    )
    .ok();
    let version = env!("CARGO_PKG_VERSION");
    server
        .remote(
            &admin,
            &[
                "host-policy",
                "set",
                "--group",
                "lab",
                "--quote",
                &p("golden.json"),
                "--event",
                &format!("23:vmattest={version}"),
            ],
        )
        .ok();
    let listed = server.remote(&admin, &["host-policy", "list"]).ok().stdout;
    assert!(
        listed.contains("lab  PCRs 0,1,2,3,4,5,6,7  1 events"),
        "{listed}"
    );

    let r = attest(&["--pcr", "23"]).ok().json();
    assert_eq!(r["status"], "affirming", "{r}");
    let claims = verify_jwt(&server, r["ear"].as_str().unwrap());
    let sub = &claims["submods"]["host:h1"];
    assert_eq!(sub["ear.status"], "affirming", "{claims}");
    assert_eq!(sub["ear.appraisal-policy-id"], "vmattest:host-policy:lab");
    assert_eq!(sub["ear.trustworthiness-vector"]["hardware"], 2);
    assert!(claims["eat_nonce"].is_string());

    // Without PCR 23 the required event is missing.
    let r = attest(&[]).ok().json();
    assert_eq!(r["status"], "contraindicated", "{r}");
    assert!(
        r["mismatches"][0]
            .as_str()
            .unwrap()
            .starts_with("PCR 23: no event vmattest"),
        "{r}"
    );

    // The boot chain changes: PCR 4 is named, with the value it has and the one it should.
    let open = || vmattest_tpm::Tpm::open(&vmattest_tpm::TpmConfig::tcti(tcti.clone())).unwrap();
    // swtpm serves one client at a time: each handle is dropped before the next command.
    open().pcr_extend(4, &[7u8; 32]).unwrap();
    let r = attest(&["--pcr", "23"]).ok().json();
    assert_eq!(r["status"], "contraindicated", "{r}");
    let m = r["mismatches"][0].as_str().unwrap();
    assert!(
        m.starts_with("PCR 4: ") && m.contains("the policy wants"),
        "{m}"
    );
    let claims = verify_jwt(&server, r["ear"].as_str().unwrap());
    assert_eq!(
        claims["submods"]["host:h1"]["ear.trustworthiness-vector"]["executables"],
        96
    );

    // Quotes the server did not ask for, or that were altered, are refused.
    let agent = Client::new(&server.url(), Some(agent_token)).unwrap();
    let quote = |nonce: &[u8]| {
        let q = open().quote(&[0, 1, 2, 3, 4, 5, 6, 7], nonce).unwrap();
        vmattest_host::quotefile::host_evidence(nonce, &q, Vec::new())
    };
    let ch = agent.host_challenge("h1").unwrap();
    let nonce = hex::decode(&ch.nonce).unwrap();
    let ev = quote(&nonce);
    let mut altered = ev.clone();
    altered.pcrs[4].sha256 = "11".repeat(32);
    refused(agent.host_attest("h1", &altered), ErrorCode::BadSignature);
    agent.host_attest("h1", &ev).unwrap();
    refused(agent.host_attest("h1", &ev), ErrorCode::ReplayedNonce);
    refused(
        agent.host_attest("h1", &quote(&[9u8; 48])),
        ErrorCode::UnknownNonce,
    );
    // A host without an attestation key gets no challenge.
    refused(c.host_challenge("h2"), ErrorCode::TpmBinding);

    let all = server
        .remote(&admin, &["--json", "host", "attestations", "--name", "h1"])
        .ok();
    assert_eq!(all.stdout.lines().count(), 5, "{}", all.stdout);
    server
        .remote(&admin, &["host-policy", "delete", "--group", "lab"])
        .ok();
    server
        .remote(&admin, &["host-policy", "delete", "--group", "lab"])
        .fails(2, "no host policy named \"lab\"");
}

fn vmattest_cli_keygen(out: &str) {
    common::vmattest(["keygen", "--alg", "ed25519", "--out", out]).ok();
}

#[test]
fn host_quotes_are_appraised_against_their_groups_policy_on_sqlite() {
    scenario(None);
}

#[test]
fn host_quotes_are_appraised_against_their_groups_policy_on_postgres() {
    let pg = vmattest_testkit::Postgres::start()
        .expect("PostgreSQL (scripts/install-deps.sh installs it)");
    scenario(Some(&pg.url()));
}

/// A host with its own swtpm, registered with its attestation key in group `lab`, and a file
/// holding its agent token.
struct TpmHost {
    name: &'static str,
    tpm: Swtpm,
    token_file: String,
}

impl TpmHost {
    fn new(name: &'static str, dir: &Path, server: &Server, admin: &Client) -> TpmHost {
        let tpm = Swtpm::start();
        let log = dir.join(format!("{name}.events"));
        let p = |n: &str| dir.join(format!("{name}.{n}")).to_str().unwrap().to_owned();
        run(&tpm.tcti(), &log, &["tpm", "keygen", "--out", &p("pub")]).ok();
        run(&tpm.tcti(), &log, &["tpm", "ak", "--out", &p("ak")]).ok();
        server
            .remote(
                &server.admin_token(),
                &[
                    "host",
                    "add",
                    "--name",
                    name,
                    "--pubkey",
                    &p("pub"),
                    "--ak",
                    &p("ak"),
                    "--group",
                    "lab",
                ],
            )
            .ok();
        std::fs::write(p("token"), token(admin, Role::Agent, Some(name))).unwrap();
        TpmHost {
            name,
            tpm,
            token_file: p("token"),
        }
    }

    /// `vmattest ARGS` on this host's TPM; `remote` commands with its agent token.
    fn run(&self, dir: &Path, server: &Server, args: &[&str]) -> Run {
        let log = dir.join(format!("{}.events", self.name));
        let url = server.url();
        let mut all: Vec<&str> = Vec::new();
        if args[0] == "remote" {
            all.extend_from_slice(&["remote", "--server", &url, "--token-file", &self.token_file]);
            all.extend_from_slice(&args[1..]);
        } else {
            all.extend_from_slice(args);
        }
        run(&self.tpm.tcti(), &log, &all)
    }
}

#[test]
fn a_chain_key_is_released_only_to_a_host_whose_quote_passes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_owned();
    let server = Server::start(&d.join("state"), None);
    let admin = Client::new(&server.url(), Some(server.admin_token())).unwrap();
    let (a, b, c) = (
        TpmHost::new("a", d, &server, &admin),
        TpmHost::new("b", d, &server, &admin),
        TpmHost::new("c", d, &server, &admin),
    );
    common::server::register_vms(&admin, "a", &["vm1"]);
    b.run(
        d,
        &server,
        &[
            "tpm",
            "quote",
            "--pcr",
            "0,1,2,3,4,5,6,7",
            "--nonce",
            "00",
            "--out",
            &p("good.quote"),
        ],
    )
    .ok();
    server
        .remote(
            &server.admin_token(),
            &[
                "host-policy",
                "set",
                "--group",
                "lab",
                "--quote",
                &p("good.quote"),
            ],
        )
        .ok();

    // An encrypted chain on a.
    common::vmattest(["keygen", "--alg", "ed25519", "--out", &p("k.key")]).ok();
    std::fs::write(p("mem"), common::vm_like(8 * 4096, 5)).unwrap();
    let store = p("store");
    common::vmattest([
        "snapshot",
        "init",
        "--store",
        &store,
        "--vm-id",
        "vm1",
        "--secret",
        &p("secret"),
    ])
    .ok();
    common::vmattest([
        "snapshot",
        "take",
        "--store",
        &store,
        "--key",
        &p("k.key"),
        "--memory",
        &p("mem"),
        "--secret",
        &p("secret"),
    ])
    .ok();
    a.run(
        d,
        &server,
        &[
            "remote",
            "vm",
            "put-key",
            "--name",
            "vm1",
            "--secret",
            &p("secret"),
            "--release-to",
            "b",
        ],
    )
    .ok();

    // b's quote passes: the key reaches b's TPM, sealed to b's PCRs, and opens the chain there.
    let release = |h: &TpmHost, out: &str| {
        h.run(
            d,
            &server,
            &[
                "remote",
                "vm",
                "release-key",
                "--name",
                "vm1",
                "--host",
                h.name,
                "--out",
                &p(out),
            ],
        )
    };
    release(&b, "b.sealed").ok();
    let verify = |h: &TpmHost| {
        h.run(
            d,
            &server,
            &[
                "snapshot",
                "verify",
                "--store",
                &store,
                "--pubkey",
                &p("k.key.pub"),
                "--secret",
                &p("b.sealed"),
            ],
        )
    };
    verify(&b).ok();
    // Another TPM cannot unseal what b sealed.
    assert_ne!(verify(&c).code, 0);
    // c was not named: nothing for it.
    release(&c, "c.sealed").fails(2, "no key of VM vm1 is held for host c");
    assert!(!Path::new(&p("c.sealed")).exists());
    // b's boot chain changes: refused, naming the PCR.
    vmattest_tpm::Tpm::open(&vmattest_tpm::TpmConfig::tcti(b.tpm.tcti()))
        .unwrap()
        .pcr_extend(4, &[1u8; 32])
        .unwrap();
    release(&b, "b2.sealed").fails(1, "host b is contraindicated: PCR 4:");
    assert!(!Path::new(&p("b2.sealed")).exists());

    // The key is not in the server's database in clear.
    let secret_hex = std::fs::read_to_string(p("secret")).unwrap();
    let raw = hex::decode(secret_hex.trim()).unwrap();
    let db = std::fs::read(d.join("state").join("server.db")).unwrap();
    assert!(!db.windows(raw.len()).any(|w| w == raw.as_slice()));
    assert!(!db.windows(64).any(|w| w == secret_hex.trim().as_bytes()));
}
