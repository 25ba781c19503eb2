//! Runtime attestation of a real QEMU guest: the agent hashes kernel regions from the guest's
//! RAM file and the server appraises them against a golden baseline from a verified snapshot.
//! Changing kernel text through the RAM file gives a contraindicated result, an alert, a
//! webhook, and (with the rollback action) a rollback to the attested snapshot. A guest whose
//! kernel patches its own code (static keys, module loads, static calls) stays affirming,
//! while changes to code, patch sites, static calls, the syscall table and read-only data are
//! caught and named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::guest::Guest;
use common::runtime::{Attested, json_lines, live_sites, padding_addr, poke};
use vmattest_core::attest::{PatchSite, Policy, SiteKind, SystemMap};

const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];

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

/// A guest that every 3 s flips a static key, loads or unloads a module, gives a tracepoint
/// its first probe or takes it away and switches its preemption mode (which retargets static
/// calls at about 450 sites), attested once a second for 610 rounds, over 10 minutes: every
/// result is affirming, although its kernel text differs from the baseline's at the sites the
/// kernel patched.
#[test]
fn a_guest_that_patches_its_own_code_stays_affirming_for_600_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let guest = Guest::with_cmdline(dir, "soak", "flipkeys=3");
    guest.start();
    let rt = Attested::set_up(dir, "soak", &guest.console(), &["--vm", guest.arg()]);
    let ram = dir.join("run-soak/ram");
    let before = live_sites(&rt.resolved, &ram);
    let calls = before
        .iter()
        .filter(|(s, _)| s.kind != SiteKind::Label)
        .count();
    assert!(
        before.len() - calls > 1000,
        "{} jump-label sites",
        before.len() - calls
    );
    assert!(calls > 1000, "{calls} static-call sites and trampolines");
    let started = Instant::now();
    // 610 rounds a second apart: 600 would span 599 s.
    let run = rt.agent_rounds(&["--count", "610", "--interval", "1"]).ok();
    let elapsed = started.elapsed();
    let results = json_lines(&run);
    assert_eq!(results.len(), 610, "{}", run.stderr);
    let bad: Vec<&serde_json::Value> = results
        .iter()
        .filter(|r| r["status"] != "affirming")
        .collect();
    assert!(
        bad.is_empty(),
        "{} non-affirming: {:?}",
        bad.len(),
        bad.first()
    );
    assert!(elapsed >= Duration::from_secs(600), "{elapsed:?}");
    let flips = guest.console().matches("flip ").count();
    assert!(flips >= 150, "{flips} flips");
    // The kernel did patch the measured text: one of two reads a flip apart differs from the
    // baseline's sites.
    let now = live_sites(&rt.resolved, &ram);
    let last = guest.console().matches("flip ").count();
    while guest.console().matches("flip ").count() == last {
        std::thread::sleep(Duration::from_millis(200));
    }
    let next = live_sites(&rt.resolved, &ram);
    assert!(now != before || next != before, "no site changed");
    // Static calls among them: the preemption mode moves cond_resched between a call and xor.
    let calls = |v: &[(PatchSite, Vec<u8>)]| -> Vec<Vec<u8>> {
        v.iter()
            .filter(|(s, _)| s.kind == SiteKind::Call)
            .map(|(_, b)| b.clone())
            .collect()
    };
    assert!(
        calls(&now) != calls(&before) || calls(&next) != calls(&before),
        "no static call changed"
    );
}

/// The physical address of `sym` in the guest whose policy files are in `dir`.
fn phys(dir: &Path, resolved_load: u64, sym: &str) -> u64 {
    let map = SystemMap::parse(&std::fs::read_to_string(dir.join("System.map")).unwrap()).unwrap();
    map.phys(sym, resolved_load).unwrap()
}

/// Writes `bytes` at `addr`, runs one round, checks that `region` is named as differing (with
/// `detail` in its detail when given; outside patch sites, its page, offset and both values
/// from the agent's follow-up), writes the old bytes back and checks the guest is affirming
/// again.
fn caught(rt: &Attested, ram: &Path, addr: u64, bytes: &[u8], region: &str, detail: &[&str]) {
    let old = poke(ram, addr, bytes);
    let run = rt.agent(&[]);
    poke(ram, addr, &old);
    let start = Policy::parse(&rt.resolved, None)
        .unwrap()
        .region(region)
        .unwrap()
        .start
        .0;
    let off = addr - start;
    let located = format!(
        "bytes differ: page {} offset {:#x}: holds {}, baseline {}",
        off / 4096,
        off % 4096,
        hex::encode(bytes),
        hex::encode(&old)
    );
    let site = !detail.is_empty();
    let result = &json_lines(&run)[0];
    assert_eq!(result["status"], "contraindicated", "{region}: {result}");
    let r = result["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == region)
        .unwrap_or_else(|| panic!("{region} not in {result}"));
    assert_eq!(r["matched"], false, "{result}");
    let text = r["detail"].as_str().unwrap_or("");
    for d in detail {
        assert!(text.contains(d), "{region}: {d:?} not in {text:?}");
    }
    // A patch site's bytes are masked from page digests: its page does not differ.
    assert_eq!(
        text.contains(&located),
        !site,
        "{region}: {located:?} in {text:?}"
    );
    let again = rt.agent(&[]).ok().json();
    assert_eq!(again["status"], "affirming", "after {region}: {again}");
}

#[test]
fn each_injected_change_is_caught_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let guest = Guest::with_cmdline(dir, "inj", "flipkeys=3");
    guest.start();
    let rt = Attested::set_up(dir, "inj", &guest.console(), &["--vm", guest.arg()]);
    let ram = dir.join("run-inj/ram");
    let clean = rt.agent(&[]).ok().json();
    assert_eq!(clean["status"], "affirming", "{clean}");
    let policy = Policy::parse(&rt.resolved, None).unwrap();
    let text = policy.region("kernel-text").unwrap().clone();

    // One byte of ordinary kernel code (int3 padding: never executed).
    let at = padding_addr(&rt.resolved, &ram);
    caught(&rt, &ram, at, &[0x90], "kernel-text", &[]);

    // A patch site set to a jump its table does not give: to the next instruction, which is
    // harmless if run. The detail names page, offset and bytes.
    let (site, _) = live_sites(&rt.resolved, &ram)
        .into_iter()
        .find(|(s, b)| {
            s.kind == SiteKind::Label && s.len == 5 && *b == NOP5 && s.addr.0 >= text.start.0
        })
        .expect("a 5-byte nop site in kernel text");
    let off = site.addr.0 - text.start.0;
    caught(
        &rt,
        &ram,
        site.addr.0,
        &[0xe9, 0, 0, 0, 0],
        "kernel-text",
        &[
            &format!("page {} offset {:#x}", off / 4096, off % 4096),
            "e900000000",
        ],
    );

    // A static call that leaves its key: one of kmalloc's tracepoint calls (never run, the
    // tracepoint is off) goes to __static_call_return0 while its other calls stay. The
    // detail names the site and its bytes.
    let kload = kernel_load(dir);
    let key = phys(dir, kload, "__SCK__tp_func_kmalloc");
    let (site, _) = live_sites(&rt.resolved, &ram)
        .into_iter()
        .filter(|(s, b)| s.kind == SiteKind::Call && s.target.0 == key && b[0] == 0xe8)
        .nth(1)
        .expect("a second call of kmalloc's tracepoint");
    let to = phys(dir, kload, "__static_call_return0");
    let rel = i32::try_from(i128::from(to) - i128::from(site.addr.0 + 5)).unwrap();
    let mut call = vec![0xe8];
    call.extend_from_slice(&rel.to_le_bytes());
    let off = site.addr.0 - text.start.0;
    caught(
        &rt,
        &ram,
        site.addr.0,
        &call,
        "kernel-text",
        &[
            &format!("page {} offset {:#x}", off / 4096, off % 4096),
            &format!("holds {}", hex::encode(&call)),
            "its static call's one target",
        ],
    );

    // A syscall-table entry (the last one, which the guest never calls).
    let entry = phys(dir, kload, "sys_call_table") + 450 * 8 + 1;
    let old = std::fs::read(&ram).unwrap()[usize::try_from(entry).unwrap()];
    caught(&rt, &ram, entry, &[old ^ 0x10], "syscalls", &[]);

    // A read-only data byte: one in a run of zeros at the end of rodata.
    let ro = policy.region("rodata").unwrap().clone();
    let bytes = std::fs::read(&ram).unwrap();
    let (lo, hi) = (
        usize::try_from(ro.start.0).unwrap(),
        usize::try_from(ro.end()).unwrap(),
    );
    let zeros = bytes[lo..hi]
        .windows(64)
        .rposition(|w| w.iter().all(|b| *b == 0))
        .expect("a run of zeros in rodata");
    caught(&rt, &ram, (lo + zeros + 32) as u64, &[0x5a], "rodata", &[]);
}

/// The physical address of `_text` the resolved policy was made with.
fn kernel_load(dir: &Path) -> u64 {
    let policy = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let line = policy
        .lines()
        .find_map(|l| l.strip_prefix("kernel_load = 0x"))
        .unwrap();
    u64::from_str_radix(line.trim(), 16).unwrap()
}
