//! Capturing a running VM into its snapshot chain.
//!
//! The VM is paused only while its state is measured: device and CPU state leaves through a
//! migration with `x-ignore-shared` (RAM stays behind in its shared file), RAM and raw disks are
//! hashed in place through a memory map, and only the pages that changed are copied out. The
//! VM then runs again while the pages are compressed, stored and the link signed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmattest_core::chain::ComponentKind;
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_store::{ComponentInput, Hold, StoreError, StoreWriter, TakeOptions, TakeSummary};

use serde_json::Value;

use crate::guard::{GuardError, GuardProgram};
use crate::qmp::{Monitor, QmpError};
use crate::spec::{Disk, DiskFormat, VmSpec};
use crate::vm::VmError;

/// Component names a VM's chain uses besides its disks' names.
pub const RAM: &str = "ram";
pub const DEVICE_STATE: &str = "device-state";
pub const CONFIG: &str = "config";

/// How long QEMU may take to write its device state.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Capture and restore errors.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The request does not fit the VM: another VM's store, a chain of another guest.
    #[error("vm {vm}: {detail}")]
    Vm { vm: String, detail: String },
    #[error("vm {vm}: status {status}: expected running or paused")]
    Status { vm: String, status: String },
    /// `qemu-img` failed on a disk.
    #[error("vm {vm}: disk {disk}: {detail}")]
    Disk {
        vm: String,
        disk: String,
        detail: String,
    },
    #[error("vm {vm}: stopping: {error}")]
    Stop { vm: String, error: Box<VmError> },
    #[error("{0}")]
    Start(Box<VmError>),
    #[error("vm {vm}")]
    Qmp {
        vm: String,
        #[source]
        source: QmpError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("vm {vm}")]
    Guard {
        vm: String,
        #[source]
        source: GuardError,
    },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl Classify for CaptureError {
    fn class(&self) -> ErrorClass {
        match self {
            CaptureError::Vm { .. } => ErrorClass::Input,
            CaptureError::Status { .. } | CaptureError::Disk { .. } | CaptureError::Io { .. } => {
                ErrorClass::Environment
            }
            CaptureError::Stop { error, .. } | CaptureError::Start(error) => error.class(),
            CaptureError::Qmp { source, .. } => source.class(),
            CaptureError::Store(e) => e.class(),
            CaptureError::Guard { source, .. } => source.class(),
        }
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaptureError + use<> {
    let path = path.to_path_buf();
    move |error| CaptureError::Io { path, error }
}

/// How a running guest is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Paused while its RAM is hashed in place: the pause grows with the guest's RAM.
    #[default]
    Paused,
    /// Paused only while QEMU starts a background snapshot and the disks' backups; RAM is read
    /// from the snapshot's stream while the guest runs (see [`crate::live`]). Guest RAM must be
    /// on shared memory (tmpfs), which userfaultfd can write-protect.
    Live,
}

/// What a capture measured, with its timings.
#[derive(Debug, Clone)]
pub struct CaptureReport {
    pub mode: Mode,
    pub summary: TakeSummary,
    /// From `stop` to `cont`: the time the guest did not run.
    pub downtime: Duration,
    /// Within the downtime: writing the device state (live mode: QEMU's start of the
    /// background snapshot, from `migrate` to its first page, which includes saving the device
    /// state and write-protecting RAM).
    pub device_state: Duration,
    /// Hashing and copying out the changed pages, within the downtime (live mode: reading the
    /// stream, waiting for the disks' backups and hashing, after it).
    pub measure: Duration,
    /// After `cont`: compressing, storing and signing.
    pub commit: Duration,
    pub device_state_bytes: u64,
}

/// Test hook, only with the `fault-injection` feature: `VMATTEST_KILL_QEMU_AT=<point>` kills
/// the VM's QEMU there, as a crash would.
#[cfg(feature = "fault-injection")]
fn kill_point(t: &Target<'_>, point: &str) {
    if let Some(spec) = t.spec
        && std::env::var("VMATTEST_KILL_QEMU_AT").is_ok_and(|v| v == point)
    {
        crate::vm::kill_now(spec);
    }
}

/// Test hook, only with the `fault-injection` feature: `VMATTEST_HOLD_AT=<point>` makes the
/// capture say so on stderr and sleep there (while the guest is paused), so that a test can
/// kill it at a known point.
#[cfg(feature = "fault-injection")]
fn hold_point(point: &str) {
    if std::env::var("VMATTEST_HOLD_AT").is_ok_and(|v| v == point) {
        eprintln!("vmattest: test hook: holding at {point}");
        std::thread::sleep(Duration::from_secs(600));
    }
}

#[cfg(not(feature = "fault-injection"))]
fn kill_point(_t: &Target<'_>, _point: &str) {}

#[cfg(not(feature = "fault-injection"))]
fn hold_point(_point: &str) {}

/// What a capture reads, whoever runs the VM: vmattest itself (from a spec) or a manager such
/// as libvirt (from its domain).
#[derive(Debug)]
pub struct Target<'a> {
    /// The VM's name; a store holds the chain of one name.
    pub name: &'a str,
    /// The shared file behind guest RAM.
    pub ram: PathBuf,
    pub disks: Vec<Disk>,
    /// The `config` component: the guest-visible configuration.
    pub config: Vec<u8>,
    /// Where the capture's private (0700) scratch directory is made (device state, qcow2
    /// disks converted to raw): a directory only this user may write, such as the VM's private
    /// run directory or a fresh private temporary directory. Its own mode is left alone.
    pub scratch_in: PathBuf,
    /// The spec of a QEMU vmattest runs itself, for the crash tests' hooks.
    pub spec: Option<&'a VmSpec>,
}

impl<'a> Target<'a> {
    pub fn of_spec(spec: &'a VmSpec) -> Target<'a> {
        Target {
            name: spec.name(),
            ram: spec.ram_path(),
            disks: spec.disks().to_vec(),
            config: spec.config_bytes(),
            scratch_in: spec.run_dir().to_path_buf(),
            spec: Some(spec),
        }
    }
}

/// Captures the running (or paused) VM as the next link of `store`. A running guest is
/// paused only while it is measured; `guard` starts a process that resumes it should this one
/// die meanwhile (see [`crate::guard`]); without one, the next command that opens the VM's
/// QMP does.
pub fn capture(
    spec: &VmSpec,
    store: &StoreWriter,
    opts: &TakeOptions<'_>,
    mode: Mode,
    guard: Option<&GuardProgram>,
) -> Result<CaptureReport, CaptureError> {
    let target = Target::of_spec(spec);
    // Before the QMP session, which would resume a guest a dead capture left paused.
    check_store(&target, store)?;
    crate::private::dir(spec.run_dir()).map_err(io(spec.run_dir()))?;
    let mut qmp = crate::vm::connect(spec).map_err(|source| CaptureError::Qmp {
        vm: spec.name().to_owned(),
        source,
    })?;
    let mut arm = || {
        crate::guard::arm(spec, guard).map_err(|source| CaptureError::Guard {
            vm: spec.name().to_owned(),
            source,
        })
    };
    capture_target(&target, &mut qmp, store, opts, mode, Some(&mut arm))
}

/// A store holds one VM's chain: another guest's pages must never extend it.
pub fn check_store(t: &Target<'_>, store: &StoreWriter) -> Result<(), CaptureError> {
    if store.meta().vm_id == t.name {
        return Ok(());
    }
    Err(CaptureError::Vm {
        vm: t.name.to_owned(),
        detail: format!(
            "the store {} holds the chain of VM {:?}, expected {:?}",
            store.root().display(),
            store.meta().vm_id,
            t.name
        ),
    })
}

pub type Arm<'g> = &'g mut dyn FnMut() -> Result<crate::guard::Armed, CaptureError>;

/// [`capture`] of any target through any monitor; `arm` starts a guardian for a running guest.
/// Migration settings the capture changes are set back afterwards, so that the VM's manager
/// finds its own later jobs (a save, a migration) as it left them.
pub fn capture_target(
    t: &Target<'_>,
    mon: &mut dyn Monitor,
    store: &StoreWriter,
    opts: &TakeOptions<'_>,
    mode: Mode,
    arm: Option<Arm<'_>>,
) -> Result<CaptureReport, CaptureError> {
    let vm = || t.name.to_owned();
    check_store(t, store)?;
    let qmp_err = |source| CaptureError::Qmp { vm: vm(), source };
    let mut status = mon.query_status().map_err(qmp_err)?;
    if status == "postmigrate" {
        // Left so by an earlier capture of a paused guest: QEMU refuses another migration
        // from this state, and only `cont` leaves it.
        mon.cont().and_then(|()| mon.stop()).map_err(qmp_err)?;
        status = mon.query_status().map_err(qmp_err)?;
    }
    let was_running = match status.as_str() {
        "running" => true,
        "paused" | "postmigrate" => false,
        other => {
            return Err(CaptureError::Status {
                vm: vm(),
                status: other.to_owned(),
            });
        }
    };
    let saved = Settings::read(mon).map_err(qmp_err)?;
    // Settings first, so that the pause covers only the capture itself.
    let caps = match mode {
        Mode::Paused => [("background-snapshot", false), ("x-ignore-shared", true)],
        Mode::Live => [("x-ignore-shared", false), ("background-snapshot", true)],
    };
    let set = mon
        .set_capabilities(&caps)
        .map_err(|source| match (mode, &source) {
            (Mode::Live, QmpError::Qemu { .. }) => CaptureError::Vm {
                vm: vm(),
                detail: format!(
                    "live capture needs guest RAM on shared memory (tmpfs, such as a run_dir under \
                 /dev/shm) that userfaultfd can write-protect; QEMU: {source}"
                ),
            },
            _ => qmp_err(source),
        });
    let result = set
        .and_then(|()| mon.set_max_bandwidth(u64::MAX >> 2).map_err(qmp_err))
        .and_then(|()| {
            let job = Job {
                t,
                store,
                opts,
                was_running,
                fit: DeviceStateFit::of(t, store)?,
            };
            match mode {
                Mode::Paused => capture_paused(&job, mon, arm),
                Mode::Live => crate::live::capture(&job, mon, arm),
            }
        });
    // Whatever happened, the settings go back as they were.
    let restored = saved.write(mon).map_err(qmp_err);
    let report = result?;
    restored?;
    Ok(report)
}

/// One capture of a target into a store, in either mode.
pub(crate) struct Job<'a> {
    pub t: &'a Target<'a>,
    pub store: &'a StoreWriter,
    pub opts: &'a TakeOptions<'a>,
    /// The guest ran when the capture began: it is paused, and resumed after.
    pub was_running: bool,
    pub fit: DeviceStateFit,
}

/// The length a capture pads its device-state stream to. QEMU reads such a stream to its end
/// mark (and description) and ignores what follows, so zeros after it change nothing; they let
/// every link of a chain keep the baseline's length, as the store requires, although streams
/// differ a little from one capture to the next and between the two modes.
pub(crate) struct DeviceStateFit {
    vm: String,
    /// The chain's length; `None` before its baseline.
    chain: Option<u64>,
}

impl DeviceStateFit {
    /// Read before the pause: it reads the head's manifest.
    fn of(t: &Target<'_>, store: &StoreWriter) -> Result<DeviceStateFit, CaptureError> {
        let chain = store
            .head_components()?
            .into_iter()
            .find(|c| c.name == DEVICE_STATE)
            .map(|c| c.len);
        Ok(DeviceStateFit {
            vm: t.name.to_owned(),
            chain,
        })
    }

    /// Pads the stream at `path` to the chain's length, or at a baseline to twice its own
    /// rounded up to 64 KiB; returns its length before.
    pub(crate) fn pad(&self, path: &Path) -> Result<u64, CaptureError> {
        let len = std::fs::metadata(path).map_err(io(path))?.len();
        let want = self
            .chain
            .unwrap_or_else(|| len.saturating_mul(2).next_multiple_of(64 << 10));
        if len > want {
            return Err(CaptureError::Vm {
                vm: self.vm.clone(),
                detail: format!(
                    "the device state is {len} bytes, more than the {want} its chain holds \
                     (fixed at the baseline); start a new chain"
                ),
            });
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(want).map_err(io(path))?;
        Ok(len)
    }
}

/// The migration settings a capture changes.
struct Settings {
    ignore_shared: bool,
    background_snapshot: bool,
    max_bandwidth: Option<u64>,
}

impl Settings {
    fn read(mon: &mut dyn Monitor) -> Result<Settings, QmpError> {
        let caps = mon.execute("query-migrate-capabilities", Value::Null)?;
        let on = |name: &str| {
            caps.as_array().is_some_and(|list| {
                list.iter().any(|c| {
                    c.get("capability").and_then(Value::as_str) == Some(name)
                        && c.get("state").and_then(Value::as_bool) == Some(true)
                })
            })
        };
        let params = mon.execute("query-migrate-parameters", Value::Null)?;
        let max_bandwidth = params.get("max-bandwidth").and_then(Value::as_u64);
        Ok(Settings {
            ignore_shared: on("x-ignore-shared"),
            background_snapshot: on("background-snapshot"),
            max_bandwidth,
        })
    }

    fn write(&self, mon: &mut dyn Monitor) -> Result<(), QmpError> {
        mon.set_capabilities(&[
            ("background-snapshot", self.background_snapshot),
            ("x-ignore-shared", self.ignore_shared),
        ])?;
        match self.max_bandwidth {
            Some(b) => mon.set_max_bandwidth(b),
            None => Ok(()),
        }
    }
}

fn capture_paused(
    job: &Job<'_>,
    mon: &mut dyn Monitor,
    arm: Option<Arm<'_>>,
) -> Result<CaptureReport, CaptureError> {
    let (t, was_running) = (job.t, job.was_running);
    let vm = || t.name.to_owned();
    let qmp_err = |source| CaptureError::Qmp { vm: vm(), source };
    let work = tempfile_dir(&t.scratch_in)?;
    let files = Scratch {
        dev: work.join(DEVICE_STATE),
        config: work.join(CONFIG),
        work,
    };
    write_private(&files.config, &t.config)?;
    // QEMU writes into a file that already exists with the right mode.
    write_private(&files.dev, &[])?;

    let armed = match arm {
        Some(arm) if was_running => match arm() {
            Ok(a) => Some(a),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&files.work);
                return Err(e);
            }
        },
        _ => None,
    };
    let t0 = Instant::now();
    let stopped = if was_running { mon.stop() } else { Ok(()) };
    let paused = match stopped {
        // The `Paused` promise ends with this statement, before the `cont` below.
        Ok(()) => measure(job, mon, &files, &Paused(())),
        Err(e) => Err(qmp_err(e)),
    };
    // Whatever happened, the guest runs on as it was.
    let resumed = if was_running {
        mon.cont().map_err(qmp_err)
    } else {
        Ok(())
    };
    let downtime = t0.elapsed();
    if let Some(armed) = armed {
        match resumed {
            Ok(()) => armed.disarm(),
            Err(_) => armed.abandon(),
        }
    }
    let (frozen, device_state, measure_time, device_state_bytes) = match (paused, resumed) {
        (Ok(p), Ok(())) => p,
        (Err(e), _) | (Ok(_), Err(e)) => {
            let _ = std::fs::remove_dir_all(&files.work);
            return Err(e);
        }
    };
    let t1 = Instant::now();
    let summary = job.store.commit(frozen, job.opts);
    let _ = std::fs::remove_dir_all(&files.work);
    Ok(CaptureReport {
        mode: Mode::Paused,
        summary: summary?,
        downtime,
        device_state,
        measure: measure_time,
        commit: t1.elapsed(),
        device_state_bytes,
    })
}

/// The capture's private files.
struct Scratch {
    work: PathBuf,
    dev: PathBuf,
    config: PathBuf,
}

type Measured = (vmattest_store::Frozen, Duration, Duration, u64);

/// The guest is stopped and stays so: made only after QMP `stop` returned (or the guest was
/// found paused) and dropped before `cont`.
struct Paused(());

// SAFETY: a `Paused` lives only between the guest's stop and its `cont` in `capture_paused`,
// and the capture holds the VM's QMP session (QEMU serves one client at a time; a manager
// such as libvirt relays one command at a time and resumes a guest only when asked), so no one
// resumes the guest meanwhile. Stopped vCPUs write no RAM, QEMU drains disk I/O on stop, and
// the migration writes only the device state file (`x-ignore-shared` leaves RAM out).
#[allow(unsafe_code)]
unsafe impl vmattest_store::Quiescent for Paused {}

/// The paused part of a capture.
fn measure(
    job: &Job<'_>,
    mon: &mut dyn Monitor,
    files: &Scratch,
    paused: &Paused,
) -> Result<Measured, CaptureError> {
    let t = job.t;
    let qmp_err = |source| CaptureError::Qmp {
        vm: t.name.to_owned(),
        source,
    };
    kill_point(t, "after-stop");
    hold_point("after-stop");
    // qcow2 disks are converted by qemu-img while QEMU writes its device state.
    let mut converting = Vec::new();
    for d in &t.disks {
        if d.format == DiskFormat::Qcow2 {
            let raw = files.work.join(format!("{}.raw", d.name));
            write_private(&raw, &[])?;
            let child = crate::img::spawn_to_raw(&d.path, &raw)
                .map_err(|detail| disk_err(t, &d.name, detail))?;
            converting.push((d.name.clone(), child));
        }
    }
    let t_dev = Instant::now();
    let migrated = mon
        .migrate_to_file(&files.dev)
        .and_then(|()| mon.wait_migration(MIGRATE_TIMEOUT).map(drop));
    let device_state = t_dev.elapsed();
    let mut converted = Ok(());
    for (name, child) in converting {
        if let Err(detail) = crate::img::wait(child) {
            converted = converted.and(Err(disk_err(t, &name, detail)));
        }
    }
    migrated.map_err(qmp_err)?;
    converted?;
    kill_point(t, "after-migrate");
    hold_point("after-migrate");
    let device_state_bytes = job.fit.pad(&files.dev)?;

    let t_measure = Instant::now();
    let mut inputs = vec![ComponentInput {
        name: RAM.into(),
        kind: ComponentKind::Memory,
        path: t.ram.clone(),
        dirty: None,
    }];
    for d in &t.disks {
        inputs.push(ComponentInput {
            name: d.name.clone(),
            kind: ComponentKind::Disk,
            path: match d.format {
                DiskFormat::Raw => d.path.clone(),
                DiskFormat::Qcow2 => files.work.join(format!("{}.raw", d.name)),
            },
            dirty: None,
        });
    }
    for (name, kind, path) in [
        (DEVICE_STATE, ComponentKind::DeviceState, &files.dev),
        (CONFIG, ComponentKind::Config, &files.config),
    ] {
        inputs.push(ComponentInput {
            name: name.into(),
            kind,
            path: path.clone(),
            dirty: None,
        });
    }
    let frozen = job
        .store
        .freeze(&inputs, job.opts.secret, Hold::WhilePaused(paused))?;
    Ok((
        frozen,
        device_state,
        t_measure.elapsed(),
        device_state_bytes,
    ))
}

fn disk_err(t: &Target<'_>, disk: &str, detail: String) -> CaptureError {
    CaptureError::Disk {
        vm: t.name.to_owned(),
        disk: disk.to_owned(),
        detail,
    }
}

/// Private scratch space in `parent`, removed after the capture. `parent` itself is left as
/// it is: it may be shared (a temporary directory's parent), so it is the caller's to choose.
pub(crate) fn tempfile_dir(parent: &Path) -> Result<PathBuf, CaptureError> {
    let dir = parent.join(format!(".capture.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::private::dir(&dir).map_err(io(&dir))?;
    Ok(dir)
}

/// Writes `bytes` into a 0600 file.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaptureError> {
    use std::io::Write as _;
    crate::private::create(path, true)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fit(chain: Option<u64>) -> DeviceStateFit {
        DeviceStateFit {
            vm: "web1".into(),
            chain,
        }
    }

    /// A baseline's stream is padded to twice its length (64 KiB steps), a later one to the
    /// chain's length with zeros after its own bytes; one longer than the chain's is refused.
    #[test]
    fn device_state_is_padded_to_the_chains_length_and_refused_beyond_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        write_private(&path, &[7; 100_000]).unwrap();
        assert_eq!(fit(None).pad(&path).unwrap(), 100_000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 65536);

        write_private(&path, &[7; 1000]).unwrap();
        assert_eq!(fit(Some(8192)).pad(&path).unwrap(), 1000);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert!(bytes[..1000].iter().all(|b| *b == 7) && bytes[1000..].iter().all(|b| *b == 0));

        write_private(&path, &[7; 9000]).unwrap();
        let e = fit(Some(8192)).pad(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            "vm web1: the device state is 9000 bytes, more than the 8192 its chain holds \
             (fixed at the baseline); start a new chain"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 9000);
    }
}
