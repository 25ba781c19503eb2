//! Runtime attestation of a real QEMU guest: the agent hashes kernel regions from the guest's
//! RAM file and the server appraises them against a golden baseline from a verified snapshot.
//! Changing kernel text through the RAM file gives a contraindicated result, an alert, a
//! webhook, and (with the rollback action) a rollback to the attested snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::guest::Guest;
use common::runtime::{Attested, json_lines};

#[test]
fn runtime_attestation_of_a_real_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let guest = Guest::new(dir, "rt");
    guest.start();
    let rt = Attested::set_up(dir, "rt", &guest.console(), &["--vm", guest.arg()]);
    let (server, admin) = (&rt.server, &rt.admin);

    // A remote party asks whether the running VM still is snapshot 0.
    let request = server
        .remote(
            admin,
            &["--json", "attest-snapshot", "--vm", "rt", "--seq", "0"],
        )
        .ok()
        .json();
    // The running guest matches its snapshot's kernel; the agent also answers the request.
    let round = rt.agent_with_store().ok();
    let lines = json_lines(&round);
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
        .remote(admin, &["--json", "reports", "--vm", "rt"])
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
        .remote(admin, &["--json", "snapshot-requests", "--vm", "rt"])
        .ok()
        .json();
    assert_eq!(answered["report_id"], reports["id"], "{answered}");

    // Change one byte of kernel text through the RAM file.
    rt.patch_kernel(&dir.join("run-rt/ram"));
    let bad = rt.agent_with_store();
    let lines = json_lines(&bad);
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
    let (_, body) = rt.hook.wait_for(1, Duration::from_secs(20));
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
    let after = rt.agent(&[]).ok().json();
    assert_eq!(after["status"], "affirming", "{after}");
}
