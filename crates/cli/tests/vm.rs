//! Real QEMU guests (TCG) captured into chains, rolled back, tampered with and migrated, all
//! through the `vmattest` binary. Needs the test guest from `scripts/build-guest.sh`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::Path;

use common::guest::Guest;
use common::*;

impl Chain {
    fn s(&self) -> &str {
        self.store.to_str().unwrap()
    }

    /// Captures just after a tick so that the captured counter is that tick.
    fn take(&self, g: &Guest) -> (u64, serde_json::Value) {
        let before = g.ticks().last().copied();
        let tick = g.next_tick(before);
        let r = vmattest([
            "--json",
            "snapshot",
            "take",
            "--store",
            self.s(),
            "--vm",
            g.arg(),
            "--key",
            self.key.to_str().unwrap(),
        ])
        .ok();
        (tick, r.json())
    }

    fn verify(&self) -> Run {
        vmattest([
            "snapshot",
            "verify",
            "--store",
            self.s(),
            "--pubkey",
            self.pubkey.to_str().unwrap(),
        ])
    }

    fn restore_vm(&self, g: &Guest, seq: u64) -> Run {
        let mut args = vec!["--json".to_owned()];
        args.extend(self.restore_args(seq));
        args.extend(["--vm".to_owned(), g.arg().to_owned()]);
        vmattest(args)
    }

    /// The disk component at `seq`, rebuilt and verified from the chain.
    fn disk_at(&self, seq: u64, scratch: &Path) -> Vec<u8> {
        self.component_at(seq, "disk0", scratch)
    }
}

/// After a rollback to a capture whose disk holds block `tick`, the guest's first tick is
/// `tick` (captured between the disk write and the console line) or `tick + 1`.
fn continues_from(g: &Guest, tick: u64) {
    g.next_tick(None);
    let first = g.ticks().first().copied();
    assert!(
        first == Some(tick) || first == Some(tick + 1),
        "restored guest should continue at tick {tick} or {}, not {first:?}; console: {}",
        tick + 1,
        g.console()
    );
}

#[test]
fn capture_deltas_roll_back_and_migrate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = Guest::new(dir, "vm-a");
    let c = chain(dir, "vm-a");
    g.start();

    let mut ticks = Vec::new();
    for seq in 0..4u64 {
        let (tick, j) = c.take(&g);
        check_capture(&j, seq, &["ram", "disk0", "device-state", "config"]);
        ticks.push(tick);
    }
    // Each capture holds the disk block of the tick seen before it, and captures move forward.
    // How far past that tick a capture lands depends on the machine's load; `captured` is the
    // newest block the capture holds.
    let mut captured = Vec::new();
    for (seq, &tick) in ticks.iter().enumerate() {
        let disk = c.disk_at(seq as u64, dir);
        assert_eq!(
            disk_block(&disk, tick),
            format!("disk tick {tick}"),
            "seq {seq}"
        );
        let newest = newest_block(&disk);
        assert!(
            newest >= tick,
            "seq {seq}: newest block {newest} < tick {tick}"
        );
        assert!(
            captured.last().is_none_or(|&p| newest >= p),
            "seq {seq} holds older blocks than seq {}",
            seq - 1
        );
        captured.push(newest);
    }
    c.verify().ok();

    // Roll back to seq 1, then to seq 3: the guest continues from each captured counter, which
    // matches the captured disk (RAM and disk are of one instant).
    for seq in [1u64, 3] {
        let j = c.restore_vm(&g, seq).ok().json();
        assert_eq!(j["seq"], seq);
        continues_from(&g, captured[seq as usize]);
    }

    // Tamper with a page batch of the baseline: a rollback to seq 2 (which decodes it) is
    // refused and the VM runs on untouched.
    let pid = g.pid().expect("running");
    let (victim, original) = tamper_baseline_batch(&c.store);
    let seen = g.ticks().last().copied();
    let r = c.restore_vm(&g, 2);
    assert_eq!(r.code, 1, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("seq 0"), "{}", r.stderr);
    assert_eq!(g.pid(), Some(pid), "the running VM must be left as it was");
    g.next_tick(seen);
    std::fs::write(&victim, &original).unwrap();

    // Migrate: bundle, import into a new store, restore under a new QEMU with another spec.
    let bundle = dir.join("vm-a.bundle");
    vmattest([
        "snapshot",
        "export",
        "--store",
        c.s(),
        "--out",
        bundle.to_str().unwrap(),
    ])
    .ok();
    let other = dir.join("store-host-b");
    vmattest([
        "snapshot",
        "import",
        "--store",
        other.to_str().unwrap(),
        "--pubkey",
        c.pubkey.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ])
    .ok();
    let b = Guest::new(dir, "vm-b");
    let cb = Chain {
        store: other,
        key: c.key.clone(),
        pubkey: c.pubkey.clone(),
    };
    let j = cb.restore_vm(&b, 3).ok().json();
    assert_eq!(j["seq"], 3);
    continues_from(&b, captured[3]);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the crash hooks: --features vmattest-cli/fault-injection"
)]
fn qemu_killed_mid_capture_leaves_the_store_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = Guest::new(dir, "vm-k");
    let c = chain(dir, "vm-k");
    g.start();
    c.take(&g);
    let log = || {
        vmattest(["--json", "snapshot", "log", "--store", c.s()])
            .ok()
            .stdout
    };
    let head = || std::fs::read(c.store.join("HEAD")).unwrap();
    let (log_before, head_before) = (log(), head());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .args([
            "snapshot",
            "take",
            "--store",
            c.s(),
            "--vm",
            g.arg(),
            "--key",
            c.key.to_str().unwrap(),
        ])
        .env("VMATTEST_KILL_QEMU_AT", "after-stop")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // QEMU died under the capture: the environment failed (exit 3).
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("vm-k"), "{stderr}");
    assert_eq!(log(), log_before, "the chain must be unchanged");
    assert_eq!(head(), head_before);
    vmattest(["snapshot", "fsck", "--store", c.s()]).ok();
    c.verify().ok();
    let s = vmattest(["--json", "vm", "status", "--vm", g.arg()])
        .ok()
        .json();
    assert_eq!(s["running"], false);
}

/// A chain of another guest never reaches QEMU: component names and the guest-visible config
/// must match the spec. These chains are built from files, so no QEMU is involved.
#[test]
fn restore_refuses_a_chain_of_another_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = Guest::new(dir, "vm-x");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    std::fs::write(dir.join("ram"), vec![1u8; 128 << 20]).unwrap();
    std::fs::write(dir.join("dev"), b"device state").unwrap();
    for (name, config, needle) in [
        ("other-config", "{\"memory_mib\":512}", "guest config"),
        ("other-components", "", "components"),
    ] {
        let c = chain(dir, name);
        std::fs::write(dir.join("config"), config).unwrap();
        let mut args = vec![
            "snapshot".to_owned(),
            "take".into(),
            "--store".into(),
            c.s().into(),
            "--key".into(),
            p("key"),
            "--memory".into(),
            format!("ram={}", p("ram")),
            "--disk".into(),
            format!("disk0={}", p("vm-x-disk0.raw")),
            "--device-state".into(),
            format!("device-state={}", p("dev")),
        ];
        if !config.is_empty() {
            args.extend(["--config".into(), format!("config={}", p("config"))]);
        }
        vmattest(&args).ok();
        c.restore_vm(&g, 0).fails(2, needle);
        let s = vmattest(["--json", "vm", "status", "--vm", g.arg()])
            .ok()
            .json();
        assert_eq!(s["running"], false, "no QEMU may be started");
    }
}

/// `vm start --wait-for` whose text never appears stops the VM it started and says so.
#[test]
fn regression_wait_for_timeout_leaves_nothing_running() {
    let tmp = tempfile::tempdir().unwrap();
    let g = Guest::new(tmp.path(), "vm-w");
    let r = vmattest([
        "--json",
        "vm",
        "start",
        "--vm",
        g.arg(),
        "--wait-for",
        "a line this guest never prints",
        "--timeout",
        "2",
    ]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("stopped the VM it started"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let s = vmattest(["--json", "vm", "status", "--vm", g.arg()])
        .ok()
        .json();
    assert_eq!(s["state"], "stopped", "{s}");
}

/// A network namespace of its own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("vmattest-{tag}-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        Netns(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[test]
fn nic_on_a_tap_device_carries_the_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ns = Netns::new("tap");
    ns.ip(&["tuntap", "add", "dev", "vmt0", "mode", "tap"]);
    ns.ip(&["link", "set", "vmt0", "up"]);
    let g = Guest::new(dir, "tapvm");
    let mut spec = std::fs::read_to_string(&g.spec).unwrap();
    spec.push_str("\n[[nic]]\nmac = \"52:54:00:a7:10:01\"\ntap = \"vmt0\"\n");
    std::fs::write(&g.spec, spec).unwrap();
    assert!(!ns.ip(&["link", "show", "vmt0"]).contains("LOWER_UP"));
    // QEMU opens the tap by name in its own namespace: start it inside this one.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(env!("CARGO_BIN_EXE_vmattest"))
        .args(["vm", "start", "--vm", g.arg(), "--wait-for", "READY"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The carrier comes up when QEMU attaches to the tap.
    assert!(ns.ip(&["link", "show", "vmt0"]).contains("LOWER_UP"));
    // The measured configuration names where the NIC is attached.
    let measured = dir.join("measured");
    let key = dir.join("k");
    vmattest(["keygen", "--alg", "ed25519", "--out", key.to_str().unwrap()]).ok();
    let m = measured.to_str().unwrap();
    vmattest([
        "config",
        "measure",
        "--vm",
        g.arg(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        m,
    ])
    .ok();
    let shown = vmattest(["config", "show", m]).ok().stdout;
    assert!(shown.contains("tap:vmt0"), "{shown}");
    // ...which the chain's guest-visible config leaves out.
    let c = chain(dir, "tapvm");
    let (_, j) = c.take(&g);
    check_capture(&j, 0, &["ram", "disk0", "device-state", "config"]);
    let config = String::from_utf8(c.component_at(0, "config", dir)).unwrap();
    assert!(
        config.contains("52:54:00:a7:10:01") && !config.contains("vmt0"),
        "{config}"
    );
}
