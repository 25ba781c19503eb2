//! One QEMU process per VM: start, stop and status, and reading the guest's serial console.
//!
//! The process is found through the pid file in the VM's run directory and trusted only while
//! its command line still carries `-name <vm name>`, so a recycled pid is never signalled.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vmattest_core::class::{Classify, ErrorClass};

use rustix::process::Signal;

use crate::qmp::{Monitor as _, Qmp, QmpError};
use crate::spec::{Boot, VmSpec};

mod console;
mod process;

pub use console::wait_console;
use process::{is_ours, remove_if_present, signal, wait_gone};

/// How long QEMU gets to create its QMP socket after daemonizing.
const QMP_CONNECT: Duration = Duration::from_secs(10);
/// How long a graceful `quit` gets before signals.
const QUIT_GRACE: Duration = Duration::from_secs(5);
const SIGNAL_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("vm {name}: {path}")]
    Io {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("vm {name}: already running as pid {pid}")]
    AlreadyRunning { name: String, pid: i32 },
    #[error("vm {name}: {what} {path} does not exist")]
    Missing {
        name: String,
        what: &'static str,
        path: PathBuf,
    },
    #[error("vm {name}: {what} {path}: expected a regular file or a block device, found {found}")]
    NotAFile {
        name: String,
        what: &'static str,
        path: PathBuf,
        found: &'static str,
    },
    #[error("vm {name}: RAM file {path} is {found} bytes, expected {expected}")]
    RamSize {
        name: String,
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("vm {name}: cannot run {qemu}")]
    Spawn {
        name: String,
        qemu: String,
        source: io::Error,
    },
    #[error("vm {name}: qemu failed ({status}): {detail}")]
    QemuFailed {
        name: String,
        status: String,
        detail: String,
    },
    #[error("vm {name}: qemu started but wrote no usable pid file {path}")]
    NoPid { name: String, path: PathBuf },
    #[error("vm {name}")]
    Qmp { name: String, source: QmpError },
    #[error("vm {name}: qemu exited while waiting for {what}: {detail}")]
    Exited {
        name: String,
        what: String,
        detail: String,
    },
    #[error("vm {name}: no console line containing {needle:?} within {} s", after.as_secs())]
    ConsoleTimeout {
        name: String,
        needle: String,
        after: Duration,
    },
    #[error("vm {name}: pid {pid} is still alive after SIGKILL")]
    Unkillable { name: String, pid: i32 },
}

impl Classify for VmError {
    /// What the spec names (files, sizes) and a VM already running are input; QEMU failing to
    /// run, answer or die is the environment.
    fn class(&self) -> ErrorClass {
        match self {
            VmError::AlreadyRunning { .. }
            | VmError::Missing { .. }
            | VmError::NotAFile { .. }
            | VmError::RamSize { .. } => ErrorClass::Input,
            VmError::Qmp { source, .. } => source.class(),
            VmError::Io { .. }
            | VmError::Spawn { .. }
            | VmError::QemuFailed { .. }
            | VmError::NoPid { .. }
            | VmError::Exited { .. }
            | VmError::ConsoleTimeout { .. }
            | VmError::Unkillable { .. } => ErrorClass::Environment,
        }
    }
}

/// A QEMU this process started, with its QMP session.
#[derive(Debug)]
pub struct Running {
    pub pid: i32,
    pub qmp: Qmp,
}

impl Running {
    /// Quits through this QMP session, then makes sure the process is gone, as [`stop`].
    pub fn stop(mut self, spec: &VmSpec) -> Result<(), VmError> {
        let quit = self.qmp.set_timeout(Duration::from_secs(2)).is_ok() && self.qmp.quit().is_ok();
        drop(self.qmp);
        stop_pid(spec, Some(self.pid), quit)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    pub pid: Option<i32>,
    /// QEMU's run state ("running", "paused", ...), when its monitor answered. QEMU serves one
    /// QMP client at a time, so this is `None` while another session is open.
    pub qemu_status: Option<String>,
    /// The guest had been left paused by a capture that died, and was resumed just now.
    pub resumed_from: Option<String>,
}

/// Where [`start`] moves the previous console log.
pub fn previous_console_path(spec: &VmSpec) -> PathBuf {
    spec.run_dir().join("console.log.1")
}

/// Starts QEMU for `spec`. A fresh start gets a zeroed RAM file; an incoming start (paused,
/// waiting for `migrate-incoming`) needs the RAM file to be in place already.
pub fn start(spec: &VmSpec, incoming: bool) -> Result<Running, VmError> {
    let name = spec.name();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VmError::Io {
            name: name.to_string(),
            path,
            source,
        }
    };
    let run = spec.run_dir();
    // RAM, console and device state are guest secrets: nobody else may even list them.
    crate::private::dir(run).map_err(io(run))?;
    let _lock = lock_run_dir(spec)?;
    if let Some(pid) = live_pid(spec) {
        return Err(VmError::AlreadyRunning {
            name: name.to_string(),
            pid,
        });
    }
    check_inputs(spec)?;

    let ram = spec.ram_path();
    let expected = spec.memory_bytes();
    if incoming {
        let found = match std::fs::metadata(&ram) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(missing(spec, "RAM file", &ram));
            }
            Err(e) => return Err(io(&ram)(e)),
        };
        if found != expected {
            return Err(VmError::RamSize {
                name: name.to_string(),
                path: ram,
                found,
                expected,
            });
        }
        crate::private::file(&ram).map_err(io(&ram))?;
    } else {
        // Truncating first leaves a sparse, all-zero file: no stale memory reaches a new boot.
        // QEMU would create it under its umask; it exists, 0600, before QEMU opens it.
        let file = crate::private::create(&ram, true).map_err(io(&ram))?;
        file.set_len(expected).map_err(io(&ram))?;
    }

    for stale in [spec.qmp_path(), spec.pid_path()] {
        remove_if_present(&stale).map_err(io(&stale))?;
    }
    let console = spec.console_path();
    if console.exists() {
        let previous = previous_console_path(spec);
        std::fs::rename(&console, &previous).map_err(io(&previous))?;
        crate::private::file(&previous).map_err(io(&previous))?;
    }
    // QEMU opens the console log without changing the mode of a file that exists.
    crate::private::create(&console, true).map_err(io(&console))?;
    let err_path = spec.err_path();
    let err_file = crate::private::create(&err_path, true).map_err(io(&err_path))?;

    // QEMU daemonizes: the command returns once the VM is set up, or fails with its reason.
    let status = Command::new(spec.qemu())
        .args(spec.command_line(incoming))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .status()
        .map_err(|source| VmError::Spawn {
            name: name.to_string(),
            qemu: spec.qemu().to_string(),
            source,
        })?;
    if !status.success() {
        return Err(VmError::QemuFailed {
            name: name.to_string(),
            status: status.to_string(),
            detail: last_error_line(spec),
        });
    }
    let Some(pid) = recorded_pid(spec) else {
        return Err(VmError::NoPid {
            name: name.to_string(),
            path: spec.pid_path(),
        });
    };
    match Qmp::connect(&spec.qmp_path(), QMP_CONNECT) {
        Ok(qmp) => Ok(Running { pid, qmp }),
        Err(source) => {
            // Do not leave a QEMU behind that nothing can talk to.
            stop_locked(spec, Some(pid), false).ok();
            Err(VmError::Qmp {
                name: name.to_string(),
                source,
            })
        }
    }
}

/// Stops the VM: QMP `quit`, then SIGTERM, then SIGKILL, each only to the recorded pid and
/// only while it is still this VM's QEMU. Succeeds when nothing is running. Keeps the RAM file.
pub fn stop(spec: &VmSpec) -> Result<(), VmError> {
    stop_pid(spec, None, false)
}

/// Opens a new QMP session to the running VM. QEMU serves one session at a time: drop
/// [`Running::qmp`] first. A guest left paused by a capture that died is resumed first.
pub fn connect(spec: &VmSpec) -> Result<Qmp, QmpError> {
    let mut qmp = Qmp::connect(&spec.qmp_path(), QMP_CONNECT)?;
    recover(spec, &mut qmp)?;
    Ok(qmp)
}

/// Resumes a guest that a dead capture left paused (see [`crate::guard`]); returns the state
/// it was resumed from.
fn recover(spec: &VmSpec, qmp: &mut Qmp) -> Result<Option<String>, QmpError> {
    match crate::guard::recover(spec, qmp) {
        Ok(crate::guard::Outcome::Resumed(from)) => Ok(Some(from)),
        Ok(_) => Ok(None),
        Err(crate::guard::GuardError::Qmp(e)) => Err(e),
        // An unreadable marker is not ours to act on.
        Err(_) => Ok(None),
    }
}

/// Kills the VM's QEMU with SIGKILL and no warning, as a crash would (for the crash hooks).
#[cfg(feature = "fault-injection")]
pub(crate) fn kill_now(spec: &VmSpec) {
    if let Some(pid) = live_pid(spec) {
        signal(pid, Signal::KILL);
        wait_gone(pid, spec.name(), SIGNAL_GRACE);
    }
}

/// Whether the VM's QEMU runs and, when its monitor answers, its run state. A guest that a
/// dead capture left paused is resumed first.
pub fn status(spec: &VmSpec) -> Status {
    let pid = live_pid(spec);
    let mut resumed_from = None;
    let qemu_status = pid.and_then(|_| {
        let mut qmp = Qmp::connect(&spec.qmp_path(), Duration::from_secs(1)).ok()?;
        qmp.set_timeout(Duration::from_secs(2)).ok()?;
        resumed_from = recover(spec, &mut qmp).ok().flatten();
        qmp.query_status().ok()
    });
    Status {
        running: pid.is_some(),
        pid,
        qemu_status,
        resumed_from,
    }
}

/// The pid of this VM's QEMU, if one is alive.
pub fn live_pid(spec: &VmSpec) -> Option<i32> {
    recorded_pid(spec).filter(|&pid| is_ours(pid, spec.name()))
}

/// `known`: the pid this process started; `quit_sent`: QEMU already accepted `quit`.
fn stop_pid(spec: &VmSpec, known: Option<i32>, quit_sent: bool) -> Result<(), VmError> {
    let _lock = match std::fs::metadata(spec.run_dir()) {
        Ok(_) => Some(lock_run_dir(spec)?),
        Err(_) => None, // never started: nothing to lock or stop
    };
    stop_locked(spec, known, quit_sent)
}

fn stop_locked(spec: &VmSpec, known: Option<i32>, quit_sent: bool) -> Result<(), VmError> {
    let name = spec.name();
    // QEMU removes its pid file as it exits, so a pid learnt at start may be all there is.
    let ours = |p: &i32| is_ours(*p, name);
    if let Some(pid) = recorded_pid(spec).filter(ours).or(known.filter(ours)) {
        if !quit_sent
            && let Ok(mut qmp) = Qmp::connect(&spec.qmp_path(), Duration::from_secs(1))
            && qmp.set_timeout(Duration::from_secs(2)).is_ok()
        {
            qmp.quit().ok();
        }
        let mut gone = wait_gone(pid, name, QUIT_GRACE);
        for sig in [Signal::TERM, Signal::KILL] {
            if !gone {
                signal(pid, sig);
                gone = wait_gone(pid, name, SIGNAL_GRACE);
            }
        }
        if !gone {
            return Err(VmError::Unkillable {
                name: name.to_string(),
                pid,
            });
        }
    }
    // A stopped guest is paused by nobody.
    for stale in [
        spec.pid_path(),
        spec.qmp_path(),
        crate::guard::marker_path(spec),
    ] {
        remove_if_present(&stale).map_err(|source| VmError::Io {
            name: name.to_string(),
            path: stale.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Serializes start and stop of one VM across processes.
fn lock_run_dir(spec: &VmSpec) -> Result<File, VmError> {
    let path = spec.run_dir().join("lock");
    let io = |source| VmError::Io {
        name: spec.name().to_string(),
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

fn check_inputs(spec: &VmSpec) -> Result<(), VmError> {
    let mut inputs: Vec<(&'static str, &Path)> = Vec::new();
    if let Boot::Kernel { kernel, initrd, .. } = spec.boot() {
        inputs.push(("kernel", kernel));
        if let Some(initrd) = initrd {
            inputs.push(("initrd", initrd));
        }
    }
    for d in spec.disks() {
        inputs.push(("disk", &d.path));
    }
    for (what, path) in inputs {
        // QEMU would block opening a FIFO, and `vm start` with it.
        let kind = match std::fs::metadata(path) {
            Ok(m) => m.file_type(),
            Err(_) => return Err(missing(spec, what, path)),
        };
        let found = if kind.is_file() || kind.is_block_device() {
            continue;
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() {
            "a character device"
        } else {
            "a special file"
        };
        return Err(VmError::NotAFile {
            name: spec.name().to_string(),
            what,
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(())
}

fn missing(spec: &VmSpec, what: &'static str, path: &Path) -> VmError {
    VmError::Missing {
        name: spec.name().to_string(),
        what,
        path: path.to_path_buf(),
    }
}

fn recorded_pid(spec: &VmSpec) -> Option<i32> {
    let mut text = String::new();
    File::open(spec.pid_path())
        .ok()?
        .take(32)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok().filter(|&pid| pid > 0)
}

/// The end of qemu.err: from QEMU's last "<program>: ..." error line on, since hints such as
/// "Use -machine help ..." follow the actual error.
pub(crate) fn last_error_line(spec: &VmSpec) -> String {
    let mut bytes = Vec::new();
    if let Ok(f) = File::open(spec.err_path()) {
        f.take(1 << 20).read_to_end(&mut bytes).ok();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let program = Path::new(spec.qemu())
        .file_name()
        .map(|p| format!("{}:", p.to_string_lossy()))
        .unwrap_or_default();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with(&program))
        .unwrap_or(lines.len().saturating_sub(1));
    let tail = &lines[from..];
    if tail.is_empty() {
        return "no message in qemu.err".to_string();
    }
    match tail {
        [first, .., last] if tail.len() > 4 => format!("{first}; ...; {last}"),
        _ => tail.join("; "),
    }
}
