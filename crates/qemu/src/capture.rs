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

use crate::guard::{GuardError, GuardProgram};
use crate::qmp::{Qmp, QmpError};
use crate::spec::{DiskFormat, VmSpec};
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

/// What a capture measured, with its timings.
#[derive(Debug, Clone)]
pub struct CaptureReport {
    pub summary: TakeSummary,
    /// From `stop` to `cont`: the time the guest did not run.
    pub downtime: Duration,
    /// Within the downtime: writing the device state.
    pub device_state: Duration,
    /// Within the downtime: hashing and copying out the changed pages.
    pub measure: Duration,
    /// After `cont`: compressing, storing and signing.
    pub commit: Duration,
    pub device_state_bytes: u64,
}

/// Test hook, only with the `fault-injection` feature: `VMATTEST_KILL_QEMU_AT=<point>` kills
/// the VM's QEMU there, as a crash would.
#[cfg(feature = "fault-injection")]
fn kill_point(spec: &VmSpec, point: &str) {
    if std::env::var("VMATTEST_KILL_QEMU_AT").is_ok_and(|v| v == point) {
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
fn kill_point(_spec: &VmSpec, _point: &str) {}

#[cfg(not(feature = "fault-injection"))]
fn hold_point(_point: &str) {}

/// Captures the running (or paused) VM as the next link of `store`. A running guest is
/// paused only while it is measured; `guard` starts a process that resumes it should this one
/// die meanwhile (see [`crate::guard`]); without one, the next command that opens the VM's
/// QMP does.
pub fn capture(
    spec: &VmSpec,
    store: &StoreWriter,
    opts: &TakeOptions<'_>,
    guard: Option<&GuardProgram>,
) -> Result<CaptureReport, CaptureError> {
    let vm = || spec.name().to_owned();
    // A store holds one VM's chain: another guest's pages must never extend it.
    if store.meta().vm_id != spec.name() {
        return Err(CaptureError::Vm {
            vm: vm(),
            detail: format!(
                "the store {} holds the chain of VM {:?}, expected {:?}",
                store.root().display(),
                store.meta().vm_id,
                spec.name()
            ),
        });
    }
    let qmp_err = |source| CaptureError::Qmp { vm: vm(), source };
    let mut qmp = crate::vm::connect(spec).map_err(qmp_err)?;
    let mut status = qmp.query_status().map_err(qmp_err)?;
    if status == "postmigrate" {
        // Left so by an earlier capture of a paused guest: QEMU refuses another migration
        // from this state, and only `cont` leaves it.
        qmp.cont().and_then(|()| qmp.stop()).map_err(qmp_err)?;
        status = qmp.query_status().map_err(qmp_err)?;
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
    // Settings first, so that the pause covers only the capture itself.
    qmp.set_capabilities(&[("x-ignore-shared", true)])
        .map_err(qmp_err)?;
    qmp.set_max_bandwidth(u64::MAX >> 2).map_err(qmp_err)?;
    let work = tempfile_dir(spec)?;
    let dev_path = work.join(DEVICE_STATE);
    let config_path = work.join(CONFIG);
    write_private(&config_path, &spec.config_bytes())?;
    // QEMU writes into a file that already exists with the right mode.
    write_private(&dev_path, &[])?;

    let armed = if was_running {
        let armed = crate::guard::arm(spec, guard)
            .map_err(|source| CaptureError::Guard { vm: vm(), source });
        match armed {
            Ok(a) => Some(a),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e);
            }
        }
    } else {
        None
    };
    let t0 = Instant::now();
    let stopped = if was_running { qmp.stop() } else { Ok(()) };
    let paused = match stopped {
        // The `Paused` promise ends with this statement, before the `cont` below.
        Ok(()) => {
            let files = (work.as_path(), dev_path.as_path(), config_path.as_path());
            measure(spec, store, opts, &mut qmp, files, &Paused(()))
        }
        Err(e) => Err(qmp_err(e)),
    };
    // Whatever happened, the guest runs on as it was.
    let resumed = if was_running {
        qmp.cont().map_err(qmp_err)
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
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let t1 = Instant::now();
    let summary = store.commit(frozen, opts);
    let _ = std::fs::remove_dir_all(&work);
    Ok(CaptureReport {
        summary: summary?,
        downtime,
        device_state,
        measure: measure_time,
        commit: t1.elapsed(),
        device_state_bytes,
    })
}

type Measured = (vmattest_store::Frozen, Duration, Duration, u64);

/// The guest is stopped and stays so: made only after QMP `stop` returned (or the guest was
/// found paused) and dropped before `cont`.
struct Paused(());

// SAFETY: a `Paused` lives only between the guest's stop and its `cont` in `capture`, and this
// process holds the VM's QMP session (QEMU serves one at a time), so no one resumes the guest
// meanwhile. Stopped vCPUs write no RAM, QEMU drains disk I/O on stop, and the migration
// writes only the device state file (`x-ignore-shared` leaves RAM out).
#[allow(unsafe_code)]
unsafe impl vmattest_store::Quiescent for Paused {}

/// The paused part of a capture.
fn measure(
    spec: &VmSpec,
    store: &StoreWriter,
    opts: &TakeOptions<'_>,
    qmp: &mut Qmp,
    (work, dev_path, config_path): (&Path, &Path, &Path),
    paused: &Paused,
) -> Result<Measured, CaptureError> {
    let qmp_err = |source| CaptureError::Qmp {
        vm: spec.name().to_owned(),
        source,
    };
    kill_point(spec, "after-stop");
    hold_point("after-stop");
    // qcow2 disks are converted by qemu-img while QEMU writes its device state.
    let mut converting = Vec::new();
    for d in spec.disks() {
        if d.format == DiskFormat::Qcow2 {
            let raw = work.join(format!("{}.raw", d.name));
            write_private(&raw, &[])?;
            let child = crate::img::spawn_to_raw(&d.path, &raw)
                .map_err(|detail| disk_err(spec, &d.name, detail))?;
            converting.push((d.name.clone(), child));
        }
    }
    let t = Instant::now();
    let migrated = qmp
        .migrate_to_file(dev_path)
        .and_then(|()| qmp.wait_migration(MIGRATE_TIMEOUT).map(drop));
    let device_state = t.elapsed();
    let mut converted = Ok(());
    for (name, child) in converting {
        if let Err(detail) = crate::img::wait(child) {
            converted = converted.and(Err(disk_err(spec, &name, detail)));
        }
    }
    migrated.map_err(qmp_err)?;
    converted?;
    kill_point(spec, "after-migrate");
    hold_point("after-migrate");
    let device_state_bytes = std::fs::metadata(dev_path).map_err(io(dev_path))?.len();

    let t = Instant::now();
    let mut inputs = vec![ComponentInput {
        name: RAM.into(),
        kind: ComponentKind::Memory,
        path: spec.ram_path(),
        dirty: None,
    }];
    for d in spec.disks() {
        inputs.push(ComponentInput {
            name: d.name.clone(),
            kind: ComponentKind::Disk,
            path: match d.format {
                DiskFormat::Raw => d.path.clone(),
                DiskFormat::Qcow2 => work.join(format!("{}.raw", d.name)),
            },
            dirty: None,
        });
    }
    for (name, kind, path) in [
        (DEVICE_STATE, ComponentKind::DeviceState, dev_path),
        (CONFIG, ComponentKind::Config, config_path),
    ] {
        inputs.push(ComponentInput {
            name: name.into(),
            kind,
            path: path.to_path_buf(),
            dirty: None,
        });
    }
    let frozen = store.freeze(&inputs, opts.secret, Hold::WhilePaused(paused))?;
    Ok((frozen, device_state, t.elapsed(), device_state_bytes))
}

fn disk_err(spec: &VmSpec, disk: &str, detail: String) -> CaptureError {
    CaptureError::Disk {
        vm: spec.name().to_owned(),
        disk: disk.to_owned(),
        detail,
    }
}

/// Scratch space next to the VM's RAM file, removed after the capture.
fn tempfile_dir(spec: &VmSpec) -> Result<PathBuf, CaptureError> {
    let dir = spec
        .run_dir()
        .join(format!(".capture.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    crate::private::dir(spec.run_dir()).map_err(io(spec.run_dir()))?;
    crate::private::dir(&dir).map_err(io(&dir))?;
    Ok(dir)
}

/// Writes `bytes` into a 0600 file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaptureError> {
    use std::io::Write as _;
    crate::private::create(path, true)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io(path))
}
