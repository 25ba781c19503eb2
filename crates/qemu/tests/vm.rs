//! The QEMU adapter against a real QEMU and the test guest built by scripts/build-guest.sh.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmattest_qemu::VmSpec;
use vmattest_qemu::qmp::{Monitor as _, QmpError};
use vmattest_qemu::vm::{self, VmError};
use vmattest_testkit::console;

const BOOT: Duration = Duration::from_secs(120);
const DISK_BYTES: u64 = 4 << 20;

/// The guest from scripts/build-guest.sh. Missing is a failure, never a skip.
fn guest_dir() -> PathBuf {
    let dir = match std::env::var_os("VMATTEST_GUEST_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("VMATTEST_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME").map(|c| Path::new(&c).join("vmattest"))
                })
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/vmattest")))
                .expect(
                    "neither VMATTEST_GUEST_DIR, VMATTEST_CACHE, XDG_CACHE_HOME nor HOME is set",
                );
            cache.join("guest")
        }
    };
    for f in ["vmlinuz", "initramfs.cpio.gz"] {
        let p = dir.join(f);
        assert!(
            p.is_file(),
            "test guest missing: {} does not exist; run scripts/build-guest.sh \
             (or point VMATTEST_GUEST_DIR at its output)",
            p.display()
        );
    }
    dir
}

/// A VM in its own directory, stopped by pid whatever the test's outcome.
struct TestVm {
    spec: VmSpec,
    dir: tempfile::TempDir,
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if let Err(e) = vm::stop(&self.spec) {
            eprintln!("cleanup: {e}");
        }
    }
}

impl TestVm {
    /// A 128 MiB guest with a 4 MiB raw disk, in a directory whose name holds `prefix`.
    fn new(name: &str, prefix: &str) -> TestVm {
        TestVm::with_args(name, prefix, "")
    }

    /// [`TestVm::new`] with `args` added to the guest's kernel command line.
    fn with_args(name: &str, prefix: &str, args: &str) -> TestVm {
        let guest = guest_dir();
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        for f in ["vmlinuz", "initramfs.cpio.gz"] {
            std::os::unix::fs::symlink(guest.join(f), dir.path().join(f)).unwrap();
        }
        let disk = std::fs::File::create(dir.path().join("disk0.raw")).unwrap();
        disk.set_len(DISK_BYTES).unwrap();
        let spec_path = dir.path().join("vm.toml");
        std::fs::write(
            &spec_path,
            format!(
                r#"name = "{name}"
memory_mib = 128
vcpus = 1
accel = "auto"

[boot]
kernel = "vmlinuz"
initrd = "initramfs.cpio.gz"
cmdline = "console=ttyS0 quiet panic=-1 {args}"

[[disk]]
name = "disk0"
path = "disk0.raw"
format = "raw"

[[nic]]
mac = "52:54:00:12:34:56"
"#
            ),
        )
        .unwrap();
        let spec = VmSpec::load(&spec_path).unwrap();
        TestVm { spec, dir }
    }
}

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn qemu_failure_reports_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\nmemory_mib = 64\nmachine = \"no-such-machine\"\n[boot]\nkernel = \"k\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("k"), b"not a kernel").unwrap();
    let spec = VmSpec::load(&path).unwrap();
    let err = vm::start(&spec, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VmError::QemuFailed { .. }), "{err:?}");
    assert!(msg.contains("no-such-machine"), "{msg}");
    assert!(!vm::status(&spec).running);
}

/// `fill=MIB` makes the test guest hold that much random data from before READY on, so that
/// benchmarks capture populated RAM rather than an idle guest's zeros.
#[test]
fn the_guest_fills_the_memory_it_is_asked_to() {
    // Well below what the 128 MiB guest can spare (about 60 MiB, less on a loaded host): the
    // guest caps the fill at that, less 32 MiB.
    let test = TestVm::with_args("fill", "vmattest-fill", "fill=16");
    let spec = &test.spec;
    vm::start(spec, false).unwrap();
    let line = vm::wait_console(spec, "filled ", BOOT).unwrap();
    assert!(line.contains("filled 16 MiB"), "{line}");
    vm::wait_console(spec, "READY", BOOT).unwrap();
    let ram = std::fs::read(spec.ram_path()).unwrap();
    let nonzero = ram
        .chunks(4096)
        .filter(|p| p.iter().any(|&b| b != 0))
        .count();
    assert!(nonzero >= 16 * 256, "{nonzero} non-zero pages");
}

#[test]
fn lifecycle_with_commas_in_every_path() {
    let t0 = Instant::now();
    let test = TestVm::new("life", "vmattest,life");
    let spec = &test.spec;
    let mut running = vm::start(spec, false).unwrap();
    let pid = running.pid;
    assert!(process_alive(pid));

    vm::wait_console(spec, "READY", BOOT).unwrap();
    let line = vm::wait_console(spec, "tick 2", BOOT).unwrap();
    assert_eq!(line, "tick 2");
    eprintln!("booted to tick 2 in {:?}", t0.elapsed());
    assert_eq!(running.qmp.query_status().unwrap(), "running");

    let err = running
        .qmp
        .execute("no-such-command", Value::Null)
        .unwrap_err();
    match &err {
        QmpError::Qemu { cmd, class, desc } => {
            assert_eq!(cmd, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert_eq!(err.to_string(), format!("qemu: no-such-command: {desc}"));
        }
        other => panic!("expected a QEMU error, got {other:?}"),
    }
    // The session is still usable after an error.
    assert_eq!(running.qmp.query_status().unwrap(), "running");

    drop(running); // QEMU serves one QMP client at a time
    let status = vm::status(spec);
    assert_eq!(
        status,
        vm::Status {
            running: true,
            pid: Some(pid),
            qemu_status: Some("running".into()),
            resumed_from: None,
        }
    );

    vm::stop(spec).unwrap();
    assert!(!process_alive(pid), "qemu {pid} survived stop");
    assert!(!spec.pid_path().exists());
    assert_eq!(
        vm::status(spec),
        vm::Status {
            running: false,
            pid: None,
            qemu_status: None,
            resumed_from: None,
        }
    );
    vm::stop(spec).unwrap(); // idempotent

    // The guest wrote "disk tick 1" into block 1 of the disk behind the comma-laden path.
    let disk = std::fs::read(test.dir.path().join("disk0.raw")).unwrap();
    assert!(disk[4096..].starts_with(b"disk tick 1\n"));
    assert_eq!(std::fs::metadata(spec.ram_path()).unwrap().len(), 128 << 20);
}

#[test]
fn second_start_is_refused() {
    let test = TestVm::new("twice", "vmattest-twice");
    let spec = &test.spec;
    let running = vm::start(spec, false).unwrap();
    let err = vm::start(spec, false).unwrap_err();
    assert!(
        matches!(err, VmError::AlreadyRunning { pid, .. } if pid == running.pid),
        "{err:?}"
    );
    assert!(err.to_string().contains("already running"));
    let err = vm::start(spec, true).unwrap_err();
    assert!(matches!(err, VmError::AlreadyRunning { .. }), "{err:?}");
    assert!(process_alive(running.pid));
    let pid = running.pid;
    running.stop(spec).unwrap();
    assert!(!process_alive(pid));
}

#[test]
fn device_state_round_trip_continues_the_guest() {
    let test = TestVm::new("trip", "vmattest-trip");
    let spec = &test.spec;
    let state = test.dir.path().join("device.state");

    let mut running = vm::start(spec, false).unwrap();
    vm::wait_console(spec, "tick 3", BOOT).unwrap();
    let qmp = &mut running.qmp;
    qmp.stop().unwrap();
    assert_eq!(qmp.query_status().unwrap(), "paused");
    qmp.wait_event("STOP", Duration::from_secs(10)).unwrap();
    qmp.set_capabilities(&[("x-ignore-shared", true)]).unwrap();
    qmp.set_max_bandwidth(1 << 40).unwrap();
    let t = Instant::now();
    qmp.migrate_to_file(&state).unwrap();
    let info = qmp.wait_migration(Duration::from_secs(60)).unwrap();
    eprintln!("device state written in {:?}", t.elapsed());
    assert_eq!(info["status"], "completed");
    assert_eq!(qmp.query_status().unwrap(), "postmigrate");
    let last = console::last_tick(&spec.console_path()).expect("a tick before the stop");
    running.stop(spec).unwrap();

    // Device and CPU state only: RAM stayed in its shared file.
    let size = std::fs::metadata(&state).unwrap().len();
    assert!(size > 0 && size < 8 << 20, "device state is {size} bytes");

    let t = Instant::now();
    let mut running = vm::start(spec, true).unwrap();
    let qmp = &mut running.qmp;
    assert_eq!(qmp.query_status().unwrap(), "inmigrate");
    qmp.set_capabilities(&[("x-ignore-shared", true)]).unwrap();
    qmp.migrate_incoming(&format!("file:{}", state.display()))
        .unwrap();
    qmp.wait_status("paused", Duration::from_secs(60)).unwrap();
    qmp.cont().unwrap();
    eprintln!("restored and running in {:?}", t.elapsed());
    let want = format!("tick {}", last + 2);
    vm::wait_console(spec, &want, BOOT).unwrap();

    // The console before the stop and after the restore read as one uninterrupted guest
    // (joined, because the stop may have cut a line in two).
    let before = std::fs::read(vm::previous_console_path(spec)).unwrap();
    let after = std::fs::read(spec.console_path()).unwrap();
    assert!(
        !String::from_utf8_lossy(&after).contains("READY"),
        "guest rebooted"
    );
    let mut joined = before.clone();
    joined.extend_from_slice(&after);
    let ticks = console::parse_ticks(&joined);
    let expected: Vec<u64> = (1..=*ticks.last().unwrap()).collect();
    assert_eq!(ticks, expected, "ticks across the restore");
    let first_new = console::parse_ticks(&after)[0];
    assert!(
        first_new == last + 1 || (first_new == last + 2 && !before.ends_with(b"\n")),
        "last tick before {last}, first after {first_new}"
    );
    running.stop(spec).unwrap();
}

/// QEMU's background snapshot of a paused guest, read by `stream`: every page it sends is the
/// RAM file's page, every page it leaves out is zero there, and the device state follows.
#[test]
fn a_background_snapshot_stream_holds_the_guests_ram() {
    use vmattest_qemu::stream::{PAGE_SIZE, Stream};
    // QEMU tracks writes with userfaultfd, which write-protects shared memory (tmpfs) but not
    // a file on a disk file system: the RAM file goes to /dev/shm.
    let shm = tempfile::Builder::new()
        .prefix("vmattest-bgsnap")
        .tempdir_in("/dev/shm")
        .unwrap();
    let mut test = TestVm::with_args("bgsnap", "vmattest-bgsnap", "fill=8");
    let spec_path = test.dir.path().join("vm.toml");
    let toml = std::fs::read_to_string(&spec_path).unwrap().replace(
        "accel = \"auto\"\n",
        &format!("accel = \"auto\"\nrun_dir = \"{}\"\n", shm.path().display()),
    );
    std::fs::write(&spec_path, toml).unwrap();
    test.spec = VmSpec::load(&spec_path).unwrap();
    let spec = &test.spec;
    assert!(spec.ram_path().starts_with(shm.path()));
    let out = test.dir.path().join("ram.stream");
    let mut running = vm::start(spec, false).unwrap();
    vm::wait_console(spec, "READY", BOOT).unwrap();
    let qmp = &mut running.qmp;
    qmp.stop().unwrap();
    qmp.set_capabilities(&[("x-ignore-shared", false), ("background-snapshot", true)])
        .unwrap();
    qmp.set_max_bandwidth(1 << 40).unwrap();
    qmp.migrate_to_file(&out).unwrap();
    qmp.wait_migration(Duration::from_secs(120)).unwrap();
    let ram = std::fs::read(spec.ram_path()).unwrap();
    running.stop(spec).unwrap();

    let file = std::io::BufReader::new(std::fs::File::open(&out).unwrap());
    let mut s = Stream::open(file).unwrap();
    let main = s
        .blocks()
        .iter()
        .position(|b| b.len == ram.len() as u64)
        .expect("a block the size of the guest's RAM");
    let mut sent = vec![false; ram.len() / PAGE_SIZE];
    let mut others = 0;
    while let Some(p) = s.next_page().unwrap() {
        if p.block != main {
            others += 1;
            continue;
        }
        let i = p.index as usize;
        assert_eq!(&ram[i * PAGE_SIZE..][..PAGE_SIZE], &p.data[..], "page {i}");
        sent[i] = true;
    }
    for (i, _) in sent.iter().enumerate().filter(|(_, s)| !**s) {
        let page = &ram[i * PAGE_SIZE..][..PAGE_SIZE];
        assert!(
            page.iter().all(|b| *b == 0),
            "page {i} left out but not zero"
        );
    }
    let sent_pages = sent.iter().filter(|s| **s).count();
    assert!(sent_pages >= 8 * 256, "{sent_pages} pages of RAM sent");
    assert!(others > 0, "the ROMs are sent too");
    let device = s.device_state().unwrap();
    assert_eq!(device[0], 0x04, "device state starts with a full section");
    eprintln!(
        "{sent_pages} RAM pages, {others} other pages, {} bytes of device state",
        device.len()
    );
}

#[test]
fn incoming_start_needs_the_ram_file() {
    let test = TestVm::new("noram", "vmattest-noram");
    let err = vm::start(&test.spec, true).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Missing {
                what: "RAM file",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn ticks_parse_from_messy_consoles() {
    let console = b"\x00\xffjunk\r\ntick 1\r\ntick 2\nnot tick 3\ntick x\ntick 4\ntick 5";
    assert_eq!(console::parse_ticks(console), [1, 2, 4]);
    assert!(console::parse_ticks(b"").is_empty());
}
