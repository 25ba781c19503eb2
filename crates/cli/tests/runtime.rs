//! Runtime attestation of a real QEMU guest: the agent hashes kernel regions from the guest's
//! RAM file and the server appraises them against a golden baseline from a verified snapshot.
//! Changing kernel text through the RAM file gives a contraindicated result, an alert, a
//! webhook, and (with the rollback action) a rollback to the attested snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::guest::Guest;
use common::server::{Server, Webhook};
use common::vmattest;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// System.map lines and the physical address of `_text`, from what the guest printed.
fn guest_symbols(console: &str) -> (String, u64) {
    let map: Vec<String> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ksym "))
        .map(str::to_string)
        .collect();
    assert!(
        map.len() >= 3,
        "no kernel symbols on the console: {console}"
    );
    let load = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("kcode "))
        .and_then(|r| r.split('-').next())
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .expect("kcode line");
    (map.join("\n") + "\n", load)
}

/// Offset in the RAM file of a byte of int3 padding inside kernel text: never executed, so
/// changing it cannot crash the guest, yet it is kernel code to any measurement.
fn padding_byte(ram: &[u8], start: usize, end: usize) -> usize {
    let text = &ram[start..end];
    let run = text
        .windows(32)
        .position(|w| w.iter().all(|b| *b == 0xcc))
        .expect("a run of int3 padding in kernel text");
    start + run + 16
}

#[test]
fn runtime_attestation_of_a_real_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let guest = Guest::new(dir, "rt");
    guest.start();
    let (map, load) = guest_symbols(&guest.console());
    std::fs::write(dir.join("System.map"), map).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            r#"name = "guest-kernel"
hash = "sha256"
schedule_secs = 2
kernel_load = {load:#x}

[[region]]
name = "kernel-text"
symbols = ["_stext", "_etext"]
weight = 10
critical = true
kernel_code = true

[[region]]
name = "rodata"
symbols = ["__start_rodata", "__end_rodata"]
weight = 2
sample = 64
"#
        ),
    )
    .unwrap();
    let resolved = vmattest([
        "policy",
        "resolve",
        "--policy",
        &s(&dir.join("policy.toml")),
        "--system-map",
        &s(&dir.join("System.map")),
    ])
    .ok();
    std::fs::write(dir.join("resolved.toml"), &resolved.stdout).unwrap();
    for k in ["host.key", "chain.key"] {
        vmattest(["keygen", "--alg", "ed25519", "--out", &s(&dir.join(k))]).ok();
    }
    let store = dir.join("store");
    vmattest([
        "snapshot",
        "init",
        "--store",
        &s(&store),
        "--vm-id",
        "rt",
        "--alg",
        "sha256",
    ])
    .ok();
    vmattest([
        "snapshot",
        "take",
        "--store",
        &s(&store),
        "--vm",
        guest.arg(),
        "--key",
        &s(&dir.join("chain.key")),
    ])
    .ok();

    let server = Server::start(&dir.join("state"), None);
    let hook = Webhook::start();
    let admin = server.admin_token();
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, "a-webhook-secret-of-some-length").unwrap();
    server
        .remote(
            &admin,
            &[
                "host",
                "add",
                "--name",
                "host1",
                "--pubkey",
                &s(&dir.join("host.key.pub")),
            ],
        )
        .ok();
    let policy = server
        .remote(
            &admin,
            &[
                "--json",
                "policy",
                "add",
                "--policy",
                &s(&dir.join("resolved.toml")),
            ],
        )
        .ok()
        .json();
    let policy_id = policy["id"].as_str().unwrap().to_string();
    server
        .remote(
            &admin,
            &[
                "vm",
                "add",
                "--name",
                "rt",
                "--host",
                "host1",
                "--policy-id",
                &policy_id,
                "--subset",
                "all",
                "--threshold",
                "90",
                "--webhook-url",
                &hook.url,
                "--webhook-secret-file",
                &s(&secret),
                "--on-alert",
                "rollback",
            ],
        )
        .ok();
    server
        .remote(
            &admin,
            &[
                "baseline",
                "--vm",
                "rt",
                "--store",
                &s(&store),
                "--seq",
                "0",
                "--policy",
                &s(&dir.join("resolved.toml")),
                "--pubkey",
                &s(&dir.join("chain.key.pub")),
            ],
        )
        .ok();
    let agent_token = server
        .remote(
            &admin,
            &["--json", "token", "--role", "agent", "--host", "host1"],
        )
        .ok()
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let token_file = dir.join("agent.token");
    std::fs::write(&token_file, &agent_token).unwrap();
    let agent = |extra: &[&str]| {
        let mut args = vec![
            "--json".to_string(),
            "agent".into(),
            "--server".into(),
            server.url(),
            "--token-file".into(),
            s(&token_file),
            "--key".into(),
            s(&dir.join("host.key")),
            "--vm".into(),
            guest.arg().into(),
            "--once".into(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_string()));
        vmattest(args)
    };

    // A remote party asks whether the running VM still is snapshot 0.
    let request = server
        .remote(
            &admin,
            &["--json", "attest-snapshot", "--vm", "rt", "--seq", "0"],
        )
        .ok()
        .json();
    // The running guest matches its snapshot's kernel; the agent also answers the request.
    let round = agent(&[
        "--store",
        &s(&store),
        "--pubkey",
        &s(&dir.join("chain.key.pub")),
    ])
    .ok();
    let lines: Vec<serde_json::Value> = round
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let clean = &lines[0];
    assert_eq!(clean["status"], "affirming", "{clean}");
    assert_eq!(clean["score"], 100, "{clean}");
    // The guest has run on since seq 0: its RAM and disk differ.
    assert_eq!(
        lines[1]["snapshot_request"], request["id"],
        "{}",
        round.stdout
    );
    assert_eq!(lines[1]["verdict"], "mismatch");
    let reports = server
        .remote(&admin, &["--json", "reports", "--vm", "rt"])
        .ok()
        .json();
    let report = hex::decode(reports["report"].as_str().unwrap()).unwrap();
    let signed = vmattest_core::attest::SignedSnapshotReport::decode(&report).unwrap();
    let host_pub = vmattest_sign::keyfile::read_public_key(&dir.join("host.key.pub")).unwrap();
    vmattest_sign::record::verify_signed(&signed, &[host_pub])
        .expect("report signed by the host key");
    assert_eq!(
        hex::encode(&signed.value().nonce),
        request["nonce"].as_str().unwrap()
    );
    let answered = server
        .remote(&admin, &["--json", "snapshot-requests", "--vm", "rt"])
        .ok()
        .json();
    assert_eq!(answered["report_id"], reports["id"], "{answered}");

    // Change one byte of kernel text through the RAM file.
    let ram_path = dir.join("run-rt/ram");
    let text = vmattest_core::attest::Policy::parse(&resolved.stdout, None).unwrap();
    let region = text.region("kernel-text").unwrap().clone();
    let ram = std::fs::read(&ram_path).unwrap();
    let at = padding_byte(
        &ram,
        usize::try_from(region.start.0).unwrap(),
        usize::try_from(region.end()).unwrap(),
    );
    drop(ram);
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&ram_path)
            .unwrap();
        f.write_at(&[0x90], at as u64).unwrap();
    }
    let bad = agent(&[
        "--store",
        &s(&store),
        "--pubkey",
        &s(&dir.join("chain.key.pub")),
    ]);
    let lines: Vec<serde_json::Value> = bad
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "a result, the rollback, then the alert as the failure: {}",
        bad.stdout
    );
    assert_eq!(lines[2]["ok"], false);
    assert_eq!(lines[2]["code"], "verification_failed");
    let bad_json = &lines[0];
    assert_eq!(bad_json["status"], "contraindicated", "{}", bad.stderr);
    assert_eq!(bad_json["rollback_seq"], 0);
    assert_eq!(lines[1]["rolled_back_to"], 0);
    assert_eq!(bad_json["score"], 0);
    assert_eq!(bad_json["alert"], true);
    let (_, body) = hook.wait_for(1, Duration::from_secs(20));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["alert"]["vm"], "rt");
    assert!(
        body["alert"]["message"]
            .as_str()
            .unwrap()
            .contains("kernel-text"),
        "{body}"
    );

    // The rollback restored the attested snapshot: the kernel matches again.
    let after = agent(&[]).ok().json();
    assert_eq!(after["status"], "affirming", "{after}");
}
