//! libvirt domains captured into chains through the `vmattest` binary, against a private
//! libvirtd per test (session mode, run as an unprivileged user, everything in a temp dir)
//! and the test guest under TCG. `virsh` is the oracle for what libvirt thinks of a domain.
//! Needs the `libvirt` feature and the test guest from `scripts/build-guest.sh`.
#![cfg(feature = "libvirt")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::domain::{Shape, TestDomain};
use common::runtime::{Attested, json_lines};
use common::server::{Server, register_vms, token};
use common::{
    Chain, chain, check_capture, disk_block, newest_block, tamper_baseline_batch, vmattest,
};
use vmattest_api::Role;
use vmattest_testkit::PrivateLibvirt;

/// Tests run side by side, except those that see what the others do: libvirt runs the hooks in
/// /etc/libvirt/hooks for every daemon (the tests' private ones too), and every capture makes
/// its scratch directory in the shared temporary directory.
static TESTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    TESTS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    TESTS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn restore(lv: &PrivateLibvirt, c: &Chain, seq: u64, name: &str) -> common::Run {
    let mut args = vec!["--json".to_owned()];
    args.extend(c.restore_args(seq));
    args.extend(["--domain", name, "--connect", lv.uri()].map(str::to_owned));
    vmattest(args)
}

/// The newest disk block of `seq`: the tick the capture holds.
fn captured_tick(c: &Chain, seq: u64, dir: &Path) -> u64 {
    newest_block(&c.component_at(seq, "vda", dir))
}

fn take(lv: &PrivateLibvirt, store: &Path, key: &Path, name: &str) -> common::Run {
    vmattest([
        "--json",
        "snapshot",
        "take",
        "--store",
        store.to_str().unwrap(),
        "--domain",
        name,
        "--connect",
        lv.uri(),
        "--key",
        key.to_str().unwrap(),
    ])
}

#[test]
fn domain_baseline_and_deltas_while_it_runs() {
    let _shared = shared();
    let lv = PrivateLibvirt::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = TestDomain::define(&lv, "g1", true);
    d.start();
    let c = chain(dir, "g1");

    let mut ticks = Vec::new();
    for seq in 0..4u64 {
        let tick = d.next_tick();
        let j = take(&lv, &c.store, &c.key, "g1").ok().json();
        check_capture(&j, seq, &["ram", "vda", "device-state", "config"]);
        // libvirt sees the domain exactly as before: running, and the guest goes on.
        assert_eq!(d.state(), "running", "after seq {seq}");
        ticks.push(tick);
    }
    assert!(d.next_tick() > ticks[3]);
    // Every migration setting the capture changed is back.
    let caps = lv.virsh_ok(&[
        "qemu-monitor-command",
        "g1",
        r#"{"execute":"query-migrate-capabilities"}"#,
    ]);
    let caps: serde_json::Value = serde_json::from_str(&caps).unwrap();
    let ignore = caps["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["capability"] == "x-ignore-shared")
        .unwrap();
    assert_eq!(ignore["state"], false, "{caps}");

    // The chain verifies, and each seq holds the disk block of the tick seen before it.
    vmattest([
        "snapshot",
        "verify",
        "--store",
        c.store.to_str().unwrap(),
        "--pubkey",
        c.pubkey.to_str().unwrap(),
    ])
    .ok();
    for (seq, &tick) in ticks.iter().enumerate() {
        let seq = seq as u64;
        let disk = c.component_at(seq, "vda", dir);
        assert_eq!(
            disk_block(&disk, tick),
            format!("disk tick {tick}"),
            "seq {seq}"
        );
        // The RAM component is all of the guest's memory.
        assert_eq!(c.component_at(seq, "ram", dir).len(), 128 << 20);
    }

    let j = vmattest([
        "--json",
        "vm",
        "status",
        "--domain",
        "g1",
        "--connect",
        lv.uri(),
    ])
    .ok()
    .json();
    assert_eq!(j["state"], "running");
    assert_eq!(j["capturable"], true);
}

#[test]
fn domain_without_shared_file_ram_is_refused_with_the_xml_to_add() {
    let _shared = shared();
    let lv = PrivateLibvirt::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = TestDomain::define(&lv, "plain", false);
    d.start();
    let Chain { store, key, .. } = chain(dir, "plain");
    let r = take(&lv, &store, &key, "plain").fails(2, "<memoryBacking>");
    assert!(r.stderr.contains("domain plain"), "{}", r.stderr);
    // Nothing was stored, and the domain runs on.
    assert!(
        !store.join("HEAD").exists(),
        "a refused capture must not move HEAD"
    );
    assert_eq!(d.state(), "running");
    // A domain libvirt does not know: one line, bad input.
    take(&lv, &store, &key, "nope").fails(2, "no domain \"nope\"");
}

/// Found in this suite: a domain capture made its scratch directory's parent, the shared
/// temporary directory, 0700, which locked every other user (PostgreSQL's tests) out of it.
#[test]
fn regression_domain_capture_never_changes_the_mode_of_tmp() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let tmp_dir = std::env::temp_dir();
    let before = mode(&tmp_dir);
    let _alone = alone();
    let lv = PrivateLibvirt::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDomain::define(&lv, "g3", true);
    d.start();
    let Chain { store, key, .. } = chain(tmp.path(), "g3");
    take(&lv, &store, &key, "g3").ok();
    assert_eq!(mode(&tmp_dir), before, "{} changed mode", tmp_dir.display());
    let leftovers: Vec<_> = std::fs::read_dir(&tmp_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("vmattest-capture-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn domain_rolls_back_and_migrates_into_another_definition() {
    let _shared = shared();
    let lv = PrivateLibvirt::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = TestDomain::define(&lv, "r1", true);
    d.start();
    let c = chain(dir, "r1");
    for _ in 0..3 {
        d.next_tick();
        take(&lv, &c.store, &c.key, "r1").ok();
    }
    let at1 = captured_tick(&c, 1, dir);

    // A tampered chain is never restored: the domain runs on in the same QEMU.
    let id = d.id();
    let (victim, original) = tamper_baseline_batch(&c.store);
    let seen = d.next_tick();
    let r = restore(&lv, &c, 1, "r1");
    assert_eq!(r.code, 1, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("seq 0"), "{}", r.stderr);
    assert_eq!(d.id(), id, "the domain must be left as it was");
    assert_eq!(d.state(), "running");
    assert!(d.next_tick() > seen);
    std::fs::write(&victim, &original).unwrap();

    // Roll back to seq 1: libvirt runs the domain again (a new QEMU), and the guest continues
    // from the captured tick.
    let j = restore(&lv, &c, 1, "r1").ok().json();
    assert_eq!(j["seq"], 1);
    assert_eq!(d.state(), "running");
    assert_ne!(d.id(), id, "a new QEMU runs the domain");
    d.continues_from(at1);
    assert_eq!(d.info("Persistent"), "yes");
    assert!(lv.virsh_ok(&["list", "--name"]).lines().any(|l| l == "r1"));
    // Later captures go on from the restored state, and the chain still verifies.
    take(&lv, &c.store, &c.key, "r1").ok();
    assert_eq!(d.state(), "running");

    // Migrate the chain into a second definition with another name (its own disk file).
    let m = TestDomain::define(&lv, "r2", true);
    assert_eq!(m.state(), "shut off");
    let j = restore(&lv, &c, 1, "r2").ok().json();
    assert_eq!(j["seq"], 1);
    assert_eq!(m.state(), "running");
    m.continues_from(at1);
    // libvirt manages it like any domain it started: shutdown is accepted, destroy stops it.
    lv.virsh_ok(&["shutdown", "r2"]);
    let _ = lv.virsh(&["destroy", "r2"]);
    assert_eq!(m.state(), "shut off");
}

/// The value the measurement in `dir` holds for `param`, through a disclosure proof.
fn disclosed(dir: &Path, param: &str, pubkey: &Path) -> String {
    let proof = dir.join(format!("{param}.proof"));
    vmattest([
        "config",
        "disclose",
        dir.to_str().unwrap(),
        "--param",
        param,
        "--out",
        proof.to_str().unwrap(),
    ])
    .ok();
    let j = vmattest([
        "--json",
        "config",
        "verify-disclosure",
        proof.to_str().unwrap(),
        "--pubkey",
        pubkey.to_str().unwrap(),
    ])
    .ok()
    .json();
    j["value"].as_str().unwrap().to_owned()
}

#[test]
fn launch_gate_refuses_changed_domains_and_starts_the_matching_one() {
    let _alone = alone();
    let mut lv = PrivateLibvirt::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Chain { key, pubkey, .. } = chain(dir, "gate");
    TestDomain::define_as(&lv, "gate-ok", &Shape::default());
    let changed = [
        (
            "gate-mem",
            Shape {
                memory_mib: 192,
                ..Shape::default()
            },
            "memory_mib",
        ),
        (
            "gate-cpu",
            Shape {
                vcpus: 2,
                ..Shape::default()
            },
            "vcpus",
        ),
        (
            "gate-disk",
            Shape {
                disk_byte: 1,
                ..Shape::default()
            },
            "disk.vda.root",
        ),
        (
            "gate-mac",
            Shape {
                mac: "52:54:00:a7:00:02",
                ..Shape::default()
            },
            "nic.0.mac",
        ),
    ];
    for (name, shape, _) in &changed {
        TestDomain::define_as(&lv, name, shape);
    }

    // The reference: the matching domain's memory, vCPUs, disk and MAC.
    let measured = dir.join("measured");
    vmattest([
        "config",
        "measure",
        "--domain",
        "gate-ok",
        "--connect",
        lv.uri(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        measured.to_str().unwrap(),
    ])
    .ok();
    let root = disclosed(&measured, "disk.vda.root", &pubkey);
    let vm = lv.vm_dir();
    let reference = vm.join("reference.toml");
    std::fs::write(
        &reference,
        format!(
            "[expect]\nmemory_mib = 128\nvcpus = 1\n\"nic.0.mac\" = \"52:54:00:a7:00:01\"\n\
             \"disk.vda.root\" = \"{root}\"\n"
        ),
    )
    .unwrap();
    lv.give(&reference).unwrap();
    // libvirt runs the hook as its own user: the program it runs must be readable by it.
    let exe = vm.join("vmattest");
    std::fs::copy(common::bin(), &exe).unwrap();
    lv.give(&exe).unwrap();

    let install = |extra: &[&str]| {
        let mut args = vec![
            "libvirt",
            "install-hook",
            "--reference",
            reference.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        common::run_program(&exe, &args)
    };
    let j = install(&["--json"]).ok().json();
    let hook = PathBuf::from(j["path"].as_str().unwrap());
    let _cleanup = RemoveOnDrop(hook.clone());
    assert_eq!(hook, Path::new("/etc/libvirt/hooks/qemu.d/vmattest"));
    lv.restart().unwrap();

    for (name, _, param) in &changed {
        let d = TestDomain::of(&lv, name);
        let out = lv.virsh(&["start", d.name]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} started: {stderr}", d.name);
        assert!(
            stderr.contains("launch refused") && stderr.contains(param),
            "{}: libvirt should show {param}: {stderr}",
            d.name
        );
        assert_eq!(d.state(), "shut off");
    }
    let ok = TestDomain::of(&lv, "gate-ok");
    ok.start();
    assert_eq!(ok.state(), "running");

    // Through a server: it holds each VM's reference, checks the host-signed measurement,
    // and the gate checks its verdict under the pinned EAR key.
    let server = Server::start(&dir.join("state"), None);
    let admin = server.admin_token();
    let host_pub = pubkey.to_str().unwrap();
    server
        .remote(
            &admin,
            &["host", "add", "--name", "h1", "--pubkey", host_pub],
        )
        .ok();
    let client = vmattest_client::Client::new(&server.url(), Some(admin.clone())).unwrap();
    register_vms(&client, "h1", &["gate-ok", "gate-mem"]);
    // libvirt runs the hook as its user: what it reads must be readable by it.
    let private = |name: &str, bytes: &[u8]| {
        use std::os::unix::fs::PermissionsExt as _;
        let path = vm.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        lv.give(&path).unwrap();
        path
    };
    let agent = private(
        "agent.token",
        token(&client, Role::Agent, Some("h1")).as_bytes(),
    );
    let admin_file = dir.join("admin.token");
    std::fs::write(&admin_file, &admin).unwrap();
    let mac_only = dir.join("mac-only.toml");
    std::fs::write(
        &mac_only,
        "[expect]\nmemory_mib = 128\nvcpus = 1\n\"nic.0.mac\" = \"52:54:00:a7:00:01\"\n",
    )
    .unwrap();
    for name in ["gate-ok", "gate-mem"] {
        vmattest([
            "config",
            "push-reference",
            "--server",
            &server.url(),
            "--token-file",
            admin_file.to_str().unwrap(),
            "--vm",
            name,
            "--reference",
            mac_only.to_str().unwrap(),
        ])
        .ok();
    }
    let ear = server.remote(&admin, &["ear-key", "--json"]).ok().stdout;
    let ear = private("ear-key.json", ear.as_bytes());
    let host_key = private("host.key", &std::fs::read(&key).unwrap());
    let url = server.url();
    let through = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "libvirt",
            "install-hook",
            "--server",
            url,
            "--token-file",
            agent.to_str().unwrap(),
            "--key",
            host_key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        common::run_program(&exe, &args).ok();
    };
    through(&url, &["--server-key", ear.to_str().unwrap()]);
    lv.virsh_ok(&["destroy", "gate-ok"]);
    let out = lv.virsh(&["start", "gate-mem"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("memory_mib"),
        "{stderr}"
    );
    lv.virsh_ok(&["start", "gate-ok"]);
    assert_eq!(ok.state(), "running");

    // Against a server that cannot be reached, the gate fails closed unless told otherwise.
    let unreachable = |extra: &[&str]| through("http://127.0.0.1:9", extra);
    unreachable(&[]);
    let cpu = TestDomain::of(&lv, "gate-cpu");
    let out = lv.virsh(&["start", cpu.name]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("fails closed"),
        "{stderr}"
    );
    assert_eq!(cpu.state(), "shut off");
    unreachable(&["--fail-open"]);
    lv.virsh_ok(&["start", cpu.name]);
    assert_eq!(cpu.state(), "running");

    // Removed, the gate lets any domain start.
    vmattest(["libvirt", "uninstall-hook"]).ok();
    assert!(!hook.exists());
    let mem = TestDomain::of(&lv, "gate-mem");
    lv.virsh_ok(&["start", mem.name]);
    assert_eq!(mem.state(), "running");
}

/// Removes a file when the test ends, passed or failed.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn agent_attests_a_domain_and_rolls_back_a_patched_kernel() {
    let _shared = shared();
    let lv = PrivateLibvirt::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = TestDomain::define(&lv, "rt1", true);
    d.start();
    let guest = ["--domain", "rt1", "--connect", lv.uri()];
    let rt = Attested::set_up(dir, "rt1", &d.console_text(), &guest);

    let clean = rt.agent(&[]).ok().json();
    assert_eq!(clean["status"], "affirming", "{clean}");
    assert_eq!(clean["score"], 100, "{clean}");
    // The running domain against its baseline: same config, RAM moved on.
    let mut args = vec![
        "attest",
        "snapshot",
        "--store",
        rt.store.to_str().unwrap(),
        "--pubkey",
    ];
    let pubkey = dir.join("chain.key.pub");
    let host_key = dir.join("host.key");
    args.extend([pubkey.to_str().unwrap(), "--seq", "0", "--key"]);
    args.extend([host_key.to_str().unwrap()]);
    args.extend(guest);
    let r = vmattest(&args).fails(1, "ram");
    assert!(!r.stderr.contains("config"), "{}", r.stderr);

    // One byte of kernel text changed in the domain's RAM file: contraindicated, and the
    // server's rollback action brings the domain back to its attested snapshot.
    let status = vmattest([
        "--json",
        "vm",
        "status",
        "--domain",
        "rt1",
        "--connect",
        lv.uri(),
    ])
    .ok()
    .json();
    rt.patch_kernel(Path::new(status["ram"].as_str().unwrap()));
    let bad = rt.agent_with_store();
    let lines = json_lines(&bad);
    assert_eq!(lines.len(), 3, "result, rollback, alert: {}", bad.stdout);
    assert_eq!(lines[0]["status"], "contraindicated", "{}", bad.stderr);
    assert_eq!(lines[1]["rolled_back_to"], 0);
    assert_eq!(d.state(), "running");
    let after = rt.agent(&[]).ok().json();
    assert_eq!(after["status"], "affirming", "{after}");
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the crash hooks: --features vmattest-cli/fault-injection"
)]
fn domain_capture_killed_while_paused_is_resumed_by_its_guardian() {
    let _alone = alone();
    let lv = PrivateLibvirt::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = TestDomain::define(&lv, "gd1", true);
    d.start();
    let Chain { store, key, .. } = chain(tmp.path(), "gd1");
    take(&lv, &store, &key, "gd1").ok();
    let args = [
        "snapshot",
        "take",
        "--store",
        store.to_str().unwrap(),
        "--domain",
        "gd1",
        "--connect",
        lv.uri(),
        "--key",
        key.to_str().unwrap(),
    ];
    for point in ["after-stop", "after-migrate"] {
        let mut child = common::spawn_held(&args, point);
        assert_eq!(d.state(), "paused", "{point}");
        child.kill().unwrap(); // SIGKILL: no unwinding, no resume of its own
        child.wait().unwrap();
        let t = Instant::now();
        while d.state() != "running" {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{point}: still {}",
                d.state()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let seen = d.next_tick();
        assert!(d.next_tick() > seen, "{point}: the guest runs");
        let caps = lv.virsh_ok(&[
            "qemu-monitor-command",
            "gd1",
            r#"{"execute":"query-migrate-capabilities"}"#,
        ]);
        assert!(
            caps.contains(r#"{"state":false,"capability":"x-ignore-shared"}"#),
            "{point}: {caps}"
        );
        // The dead capture's scratch directory (its device state) went with the pause.
        let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("vmattest-capture-")
            })
            .collect();
        assert!(left.is_empty(), "{point}: {left:?}");
        // The chain goes on.
        take(&lv, &store, &key, "gd1").ok();
    }
}
