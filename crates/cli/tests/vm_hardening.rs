//! Real QEMU guests (TCG) under hostile conditions: a capture killed while the guest is
//! paused, file modes of guest memory, and FIFOs named as a VM's files. Needs the test guest
//! from `scripts/build-guest.sh`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::guest::{self, Guest};
use common::*;

impl Chain {
    fn take_args<'a>(&'a self, g: &'a Guest) -> Vec<&'a str> {
        vec![
            "--json",
            "snapshot",
            "take",
            "--store",
            self.store.to_str().unwrap(),
            "--vm",
            g.arg(),
            "--key",
            self.key.to_str().unwrap(),
        ]
    }

    fn take(&self, g: &Guest) -> serde_json::Value {
        vmattest(self.take_args(g)).ok().json()
    }

    /// Starts a take that stops at `point` inside the pause; returns once it is there.
    fn take_held(&self, g: &Guest, point: &str) -> std::process::Child {
        spawn_held(&self.take_args(g), point)
    }
}

fn status(g: &Guest) -> serde_json::Value {
    vmattest(["--json", "vm", "status", "--vm", g.arg()])
        .ok()
        .json()
}

/// The console's tick counter advances within `limit`: the guest executes.
fn ticks_within(g: &Guest, limit: Duration) -> u64 {
    let seen = g.ticks().last().copied();
    let t = Instant::now();
    loop {
        if let Some(&last) = g.ticks().last()
            && Some(last) > seen
        {
            return last;
        }
        assert!(
            t.elapsed() < limit,
            "no tick after {seen:?} within {limit:?}: the guest does not run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pids of running `vmattest __guard` processes for this marker.
fn guardians(marker: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.contains(&&b"__guard"[..]) && args.contains(&marker.as_os_str().as_encoded_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the crash hooks: --features vmattest-cli/fault-injection"
)]
fn regression_take_killed_inside_pause_leaves_guest_paused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = Guest::new(dir, "vm-p");
    let c = chain(dir, "vm-p");
    g.start();
    assert_eq!(c.take(&g)["seq"], 0);
    let marker = g.dir.join("capture.pause");
    assert!(!marker.exists(), "a finished take leaves no pause marker");
    assert_eq!(status(&g)["state"], "running");

    // Killed in `paused` (after stop) and in `postmigrate` (after the device state left):
    // the guardian resumes the guest within seconds, and the next take works.
    let mut seq = 1;
    for point in ["after-stop", "after-migrate"] {
        let mut child = c.take_held(&g, point);
        assert!(marker.exists(), "{point}: the pause is marked");
        let held = g.ticks().last().copied();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            g.ticks().last().copied(),
            held,
            "{point}: the guest is paused"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        ticks_within(&g, Duration::from_secs(5));
        let s = status(&g);
        assert_eq!(s["state"], "running", "{point}: {s}");
        assert_eq!(s["qemu_status"], "running", "{point}: {s}");
        assert!(
            s["resumed_from"].is_null(),
            "the guardian resumed it, not status: {s}"
        );
        assert!(!marker.exists(), "{point}: the marker is removed");
        assert_eq!(
            c.take(&g)["seq"],
            seq,
            "{point}: a take after the killed one"
        );
        seq += 1;
    }

    // The guardian killed as well: the next command that opens the monitor resumes the guest.
    let mut child = c.take_held(&g, "after-migrate");
    let pids = guardians(&marker);
    assert_eq!(pids.len(), 1, "one guardian per pause: {pids:?}");
    let killed = Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let before = status_text(&g);
    assert!(before.contains("resumed"), "{before}");
    assert!(before.contains("postmigrate"), "{before}");
    assert!(before.contains("vm-p: running (QEMU running)"), "{before}");
    ticks_within(&g, Duration::from_secs(5));
    assert_eq!(c.take(&g)["seq"], seq);
    vmattest([
        "snapshot",
        "verify",
        "--store",
        c.store.to_str().unwrap(),
        "--pubkey",
        c.pubkey.to_str().unwrap(),
    ])
    .ok();

    // A guest paused on purpose is reported as paused, not running, and stays paused.
    let pid = g.pid().unwrap();
    let sock = g.dir.join("qmp.sock");
    qmp_command(&sock, "stop");
    let s = status(&g);
    assert_eq!(
        (s["state"].as_str(), s["qemu_status"].as_str()),
        (Some("paused"), Some("paused"))
    );
    assert_eq!(s["pid"], pid);
    assert!(status_text(&g).contains("vm-p: paused (QEMU paused)"));
    // A capture of a paused guest leaves it paused (in postmigrate), and can be repeated.
    c.take(&g);
    c.take(&g);
    assert_eq!(status(&g)["state"], "paused");
}

fn status_text(g: &Guest) -> String {
    vmattest(["vm", "status", "--vm", g.arg()]).ok().stdout
}

/// One QMP command on a fresh session.
fn qmp_command(sock: &Path, cmd: &str) {
    use std::io::Write as _;
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // greeting
    let mut w = s;
    for c in ["qmp_capabilities", cmd] {
        writeln!(w, "{{\"execute\":\"{c}\"}}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.contains("\"return\"") {
                break;
            }
            assert!(!line.contains("\"error\""), "{line}");
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn regression_guest_memory_world_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let g = Guest::new(dir, "vm-m");
    let c = chain(dir, "vm-m");
    // An existing, open run directory is tightened too.
    std::fs::create_dir(&g.dir).unwrap();
    std::fs::set_permissions(&g.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Under the usual umask QEMU and vmattest would create their files 0644.
    let with_umask = |args: &[&str]| {
        let out = Command::new("sh")
            .arg("-c")
            .arg("umask 022; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_vmattest"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    with_umask(&["vm", "start", "--vm", g.arg(), "--wait-for", "READY"]);
    let check = |when: &str| {
        assert_eq!(mode(&g.dir), 0o700, "{when}: run dir");
        for f in ["ram", "console.log", "qemu.err"] {
            assert_eq!(mode(&g.dir.join(f)), 0o600, "{when}: {f}");
        }
    };
    check("started");
    c.take(&g);
    c.take(&g);
    with_umask(&[
        "snapshot",
        "restore",
        "--store",
        c.store.to_str().unwrap(),
        "--pubkey",
        c.pubkey.to_str().unwrap(),
        "--seq",
        "0",
        "--vm",
        g.arg(),
    ]);
    check("restored");
    assert_eq!(mode(&g.dir.join("console.log.1")), 0o600);
    let leftovers: Vec<String> = std::fs::read_dir(&g.dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".restore") || n.starts_with(".capture"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The disk keeps the mode it had.
    assert_eq!(mode(&dir.join("vm-m-disk0.raw")), 0o644);
}

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success());
}

#[test]
fn regression_fifo_as_vm_file_hangs_command() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fifo = dir.join("fifo");
    mkfifo(&fifo);
    let key = dir.join("key");
    vmattest(["keygen", "--alg", "ed25519", "--out", key.to_str().unwrap()]).ok();
    let limit = Duration::from_secs(10);
    let kernel = guest::guest_dir().join("vmlinuz");
    let out = dir.join("out");

    // A libvirt disk source.
    let xml = dir.join("dom.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='kvm'><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type machine='pc'>hvm</type><kernel>{}</kernel></os><devices>\
             <disk type='file'><source file='{}'/><target dev='vda'/></disk>\
             </devices></domain>",
            kernel.display(),
            fifo.display()
        ),
    )
    .unwrap();
    let measure = |src: &str, path: &Path| {
        vmattest_within(
            &[
                "config",
                "measure",
                src,
                path.to_str().unwrap(),
                "--name",
                "fifo",
                "--key",
                key.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            limit,
        )
    };
    measure("--libvirt", &xml).fails(2, "found a FIFO");
    // The domain XML itself.
    measure("--libvirt", &fifo).fails(2, "found a FIFO");

    // A spec's kernel: measuring it, and starting the VM.
    let g = Guest::new(dir, "vm-f");
    let text = std::fs::read_to_string(&g.spec).unwrap();
    std::fs::write(
        &g.spec,
        text.replace(kernel.to_str().unwrap(), fifo.to_str().unwrap()),
    )
    .unwrap();
    measure("--vm", &g.spec).fails(2, "found a FIFO");
    vmattest_within(&["vm", "start", "--vm", g.arg()], limit).fails(2, "found a FIFO");
    // A package list.
    let plain = dir.join("plain.xml");
    let text = std::fs::read_to_string(&xml).unwrap();
    let disk_start = text.find("<disk").unwrap();
    let disk_end = text.find("</disk>").unwrap() + "</disk>".len();
    std::fs::write(
        &plain,
        format!("{}{}", &text[..disk_start], &text[disk_end..]),
    )
    .unwrap();
    let r = vmattest_within(
        &[
            "config",
            "measure",
            "--libvirt",
            plain.to_str().unwrap(),
            "--name",
            "fifo",
            "--packages",
            fifo.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        limit,
    );
    r.fails(2, "found a FIFO");
}
