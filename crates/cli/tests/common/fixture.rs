//! A server fixture with a file standing in for guest RAM: a verified one-snapshot store,
//! host, policy, VM (with a webhook) and baseline registered, and clients for each role.

use std::path::{Path, PathBuf};

use vmattest_agent::evidence::{Measured, evidence_bytes};
use vmattest_agent::run::check_challenge;
use vmattest_api::{
    AttestationResult, ErrorCode, NewHost, NewPolicy, NewToken, NewVm, Role, Webhook as Hook,
};
use vmattest_client::Client;
use vmattest_core::attest::Policy;
use vmattest_sign::{SecretKey, Signer};

use super::server::{Server, Webhook};
use super::{vm_like, vmattest};

pub const PAGES: usize = 64;
pub const POLICY: &str = r#"
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

[[region]]
name = "data"
start = 0x10000
len = 0x10000
sample = 4

[[subset]]
id = "code"
regions = ["code"]
"#;
pub const HOOK_SECRET: &str = "0123456789abcdef-hook";

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub ram: PathBuf,
    pub host_key: SecretKey,
    pub policy: Policy,
    pub agent: Client,
    pub auditor: Client,
    pub admin: Client,
    pub admin_token: String,
    pub agent_token: String,
    pub auditor_token: String,
    pub hook: Webhook,
}

pub fn write_key(dir: &Path, name: &str) -> (SecretKey, PathBuf) {
    let out = dir.join(name);
    vmattest(["keygen", "--alg", "ed25519", "--out", out.to_str().unwrap()]).ok();
    let key = vmattest_sign::keyfile::read_secret_key(&out).unwrap();
    (key, out)
}

/// A store with one snapshot of `ram`, and everything registered on `server`.
pub fn setup(server: &Server) -> Fixture {
    setup_with(server, true)
}

/// As [`setup`]; `webhook`: whether the VM gets the webhook (else it has none).
pub fn setup_with(server: &Server, webhook: bool) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ram = dir.join("ram.img");
    std::fs::write(&ram, vm_like(PAGES * 4096, 7)).unwrap();
    let (host_key, _) = write_key(&dir, "host.key");
    let (_, chain_key) = write_key(&dir, "chain.key");
    let store = dir.join("store");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    vmattest([
        "snapshot",
        "init",
        "--store",
        &s(&store),
        "--vm-id",
        "file-guest",
        "--alg",
        "sha256",
    ])
    .ok();
    vmattest([
        "snapshot",
        "take",
        "--store",
        &s(&store),
        "--memory",
        &format!("ram={}", s(&ram)),
        "--key",
        &s(&chain_key),
    ])
    .ok();
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let resolved = vmattest([
        "policy",
        "resolve",
        "--policy",
        &s(&dir.join("policy.toml")),
    ])
    .ok();
    std::fs::write(dir.join("resolved.toml"), &resolved.stdout).unwrap();
    let policy = Policy::parse(&resolved.stdout, None).unwrap();

    let admin_token = server.admin_token();
    let admin = Client::new(&server.url(), Some(admin_token.clone())).unwrap();
    let hook = Webhook::start();
    admin
        .add_host(&NewHost {
            name: "host1".into(),
            public_key_pem: host_key.public_key().to_pem(),
            tpm: None,
            group: None,
        })
        .unwrap();
    let p = admin
        .add_policy(&NewPolicy {
            toml: resolved.stdout.clone(),
        })
        .unwrap();
    assert_eq!(p.id, policy.id().to_hex());
    admin
        .add_vm(&NewVm {
            name: "vm1".into(),
            host: "host1".into(),
            policy_id: p.id.clone(),
            approved_subsets: vec!["all".into()],
            threshold: 90,
            webhook: webhook.then(|| Hook {
                url: hook.url.clone(),
                secret: HOOK_SECRET.into(),
            }),
            on_alert: Default::default(),
        })
        .unwrap();
    // The baseline goes through the CLI: verified chain, rebuilt memory, page digests.
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, &admin_token).unwrap();
    vmattest([
        "remote",
        "--server",
        &server.url(),
        "--token-file",
        &s(&token_file),
        "baseline",
        "--vm",
        "vm1",
        "--store",
        &s(&store),
        "--seq",
        "0",
        "--policy",
        &s(&dir.join("resolved.toml")),
        "--pubkey",
        &format!("{}.pub", s(&chain_key)),
        "--component",
        "ram",
    ])
    .ok();
    let token = |role, host: Option<&str>| {
        admin
            .create_token(&NewToken {
                role,
                host: host.map(str::to_string),
            })
            .unwrap()
            .token
    };
    let agent_token = token(Role::Agent, Some("host1"));
    let auditor_token = token(Role::Auditor, None);
    Fixture {
        agent: Client::new(&server.url(), Some(agent_token.clone())).unwrap(),
        auditor: Client::new(&server.url(), Some(auditor_token.clone())).unwrap(),
        admin,
        admin_token,
        agent_token,
        auditor_token,
        _dir: tmp,
        dir,
        ram,
        host_key,
        policy,
        hook,
    }
}

/// Challenge, then evidence over the RAM file as it is now, signed by `key`.
pub fn evidence_for(f: &Fixture, key: &dyn Signer) -> Vec<u8> {
    let c = f.agent.challenge("vm1").unwrap();
    let (policy, nonce) = check_challenge("vm1", &c).unwrap();
    let ram = std::fs::read(&f.ram).unwrap();
    let measurement = vmattest_agent::measure(&ram, &policy, &c.subset, &nonce).unwrap();
    evidence_bytes(
        Measured {
            vm: "vm1",
            nonce: &nonce,
            policy: &policy,
            subset: &c.subset,
            measurement,
        },
        key,
    )
    .unwrap()
}

pub fn refused(
    r: Result<AttestationResult, vmattest_client::ClientError>,
    code: ErrorCode,
) -> String {
    let e = r.expect_err("expected a refusal");
    assert_eq!(e.code(), Some(&code), "{e}");
    e.to_string()
}

pub fn flip_code_byte(ram: &Path) {
    let mut bytes = std::fs::read(ram).unwrap();
    bytes[3 * 4096 + 100] ^= 0x5a;
    std::fs::write(ram, bytes).unwrap();
}
