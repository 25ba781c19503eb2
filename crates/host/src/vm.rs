//! VM handles: a spec found by name or path; start, stop and status; capture into a chain
//! and rollback from one. Rollback is one function for every caller (`snapshot restore --vm`
//! and the agent's alert action).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmattest_core::chain::SeqNo;
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::tree::Progress;
use vmattest_qemu::capture::{self, CaptureError, CaptureReport};
use vmattest_qemu::guard::GuardProgram;
use vmattest_qemu::restore::RestoreReport;
use vmattest_qemu::vm::VmError;
use vmattest_qemu::{Mode, SpecError, VmSpec};
use vmattest_store::{Store, StoreError, TakeOptions};

use crate::verifier::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum HostVmError {
    #[error("VM spec")]
    Spec(#[source] SpecError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("vm {vm}: the console did not print {needle:?} within {secs} s; {what}")]
    WaitTimeout {
        vm: String,
        needle: String,
        secs: u64,
        what: &'static str,
    },
    #[error("locating the vmattest binary to guard the pause")]
    CurrentExe(#[source] std::io::Error),
}

impl Classify for HostVmError {
    fn class(&self) -> ErrorClass {
        match self {
            HostVmError::Spec(e) => e.class(),
            HostVmError::Vm(e) => e.class(),
            HostVmError::Capture(e) => e.class(),
            HostVmError::Store(e) => e.class(),
            HostVmError::WaitTimeout { .. } | HostVmError::CurrentExe(_) => ErrorClass::Environment,
        }
    }
}

/// A spec file path, or NAME for `$VMATTEST_VMS/NAME.toml` (default directory `vms`).
pub fn load_spec(arg: &str) -> Result<VmSpec, HostVmError> {
    let direct = Path::new(arg);
    let path = if direct.is_file() || arg.contains('/') || arg.ends_with(".toml") {
        direct.to_path_buf()
    } else {
        let dir =
            std::env::var_os("VMATTEST_VMS").map_or_else(|| PathBuf::from("vms"), PathBuf::from);
        dir.join(format!("{arg}.toml"))
    };
    VmSpec::load(&path).map_err(HostVmError::Spec)
}

/// A started VM.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub pid: i32,
    pub elapsed: Duration,
}

/// Starts the VM and, with `wait_for`, waits until its console prints that text; a VM whose
/// console stays silent is stopped again, so a failed start leaves nothing running.
pub fn start(
    spec: &VmSpec,
    wait_for: Option<&str>,
    timeout: Duration,
) -> Result<Started, HostVmError> {
    let t = Instant::now();
    let running = vmattest_qemu::vm::start(spec, false)?;
    let pid = running.pid;
    drop(running);
    if let Some(needle) = wait_for
        && let Err(e) = vmattest_qemu::vm::wait_console(spec, needle, timeout)
    {
        let stopped = vmattest_qemu::vm::stop(spec).is_ok();
        return match e {
            VmError::ConsoleTimeout { .. } => Err(HostVmError::WaitTimeout {
                vm: spec.name().to_owned(),
                needle: needle.to_owned(),
                secs: timeout.as_secs(),
                what: if stopped {
                    "stopped the VM it started"
                } else {
                    "stopping it failed, so it may still run"
                },
            }),
            other => Err(other.into()),
        };
    }
    Ok(Started {
        pid,
        elapsed: t.elapsed(),
    })
}

/// What `vm status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmState {
    pub vm: String,
    /// Whether the VM's QEMU process is alive (its guest may still be paused).
    pub running: bool,
    pub pid: Option<i32>,
    /// QEMU's run state; none while another QMP client holds the monitor.
    pub qemu_status: Option<String>,
    /// "stopped" (no QEMU), "running" (the guest executes), "paused" (any other run state,
    /// named by `qemu_status`) or "busy" (the monitor did not answer).
    pub state: &'static str,
    /// The state a dead capture had left the guest in, when this call resumed it.
    pub resumed_from: Option<String>,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let vm = &self.vm;
        if let Some(from) = &self.resumed_from {
            writeln!(
                f,
                "{vm}: was left {from} by an interrupted capture; resumed"
            )?;
        }
        match (self.pid, self.qemu_status.as_deref()) {
            (None, _) => write!(f, "{vm}: stopped"),
            (Some(pid), Some(q)) => write!(f, "{vm}: {} (QEMU {q}), pid {pid}", self.state),
            (Some(pid), None) => write!(
                f,
                "{vm}: QEMU runs as pid {pid}; its monitor is busy (a capture or another client), state unknown"
            ),
        }
    }
}

pub fn status(spec: &VmSpec) -> VmState {
    let s = vmattest_qemu::vm::status(spec);
    let state = match (s.running, s.qemu_status.as_deref()) {
        (false, _) => "stopped",
        (true, Some("running")) => "running",
        (true, Some(_)) => "paused",
        (true, None) => "busy",
    };
    VmState {
        vm: spec.name().to_owned(),
        running: s.running,
        pid: s.pid,
        qemu_status: s.qemu_status,
        state,
        resumed_from: s.resumed_from,
    }
}

/// How a capture starts its guardian: this binary's hidden `__guard` subcommand.
pub fn guard_program() -> Result<GuardProgram, HostVmError> {
    let program = std::env::current_exe().map_err(HostVmError::CurrentExe)?;
    Ok(GuardProgram {
        program,
        args: vec!["__guard".into()],
    })
}

/// Captures the running VM as the next link of the store at `root`: paused only while it is
/// measured (in live mode, while its snapshot starts), resumed by a guardian should this
/// process die meanwhile.
pub fn take(
    root: &Path,
    spec: &VmSpec,
    opts: &TakeOptions<'_>,
    mode: Mode,
) -> Result<CaptureReport, HostVmError> {
    let store = Store::open_writer(root)?;
    let guard = guard_program()?;
    Ok(capture::capture(spec, &store, opts, mode, Some(&guard))?)
}

/// Verifies the chain at `root` up to `seq` (the head when `None`) against the verifier's
/// pinned keys, then replaces the VM's state with it and resumes the guest.
pub fn rollback(
    spec: &VmSpec,
    root: &Path,
    verifier: &Verifier,
    seq: Option<SeqNo>,
    progress: Option<Box<dyn Progress + Send>>,
) -> Result<RestoreReport, HostVmError> {
    let mut store = Store::open(root)?;
    if let Some(p) = progress {
        store.set_progress(p);
    }
    let opts = verifier.options(seq, None);
    Ok(vmattest_qemu::restore::restore(spec, &store, &opts)?)
}
