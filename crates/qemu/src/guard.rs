//! Keeping a guest from staying paused when the process that paused it dies.
//!
//! Before a capture pauses a running guest it writes a pause marker (its pid and start time)
//! into the VM's run directory and starts a guardian: a separate process, in its own process
//! group, whose stdin is a pipe only the capturer holds. A capture that finishes resumes the
//! guest, writes [`DONE`] and removes the marker. If the capturer dies instead, the kernel
//! closes the pipe; the guardian reads end of file, takes over the QMP socket (QEMU serves one
//! client, and the dead capturer's session is gone) and resumes the guest if the marker is
//! still there. Should the guardian die too, the next command that opens the VM's QMP finds
//! the marker of a dead capturer and does the same ([`recover`]).

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};
use vmattest_core::class::{Classify, ErrorClass};

use crate::qmp::{Monitor, Qmp, QmpError};
use crate::spec::VmSpec;

/// What the capturer writes to the guardian once the guest runs again.
pub const DONE: &str = "done";
/// File name of the pause marker in the run directory.
pub(crate) const MARKER: &str = "capture.pause";
const MARKER_MAGIC: &str = "vmattest capture pause v1";
/// How long the guardian waits for QEMU's monitor, which the capturer may still hold while
/// it unwinds.
const GUARD_CONNECT: Duration = Duration::from_secs(120);
/// How long a migration the capturer started may take to end once cancelled.
const MIGRATION_END: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("pause marker {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot start the pause guardian {program}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("resuming the guest after an interrupted capture")]
    Qmp(#[from] QmpError),
}

impl Classify for GuardError {
    fn class(&self) -> ErrorClass {
        match self {
            GuardError::Io { .. } | GuardError::Spawn { .. } => ErrorClass::Environment,
            GuardError::Qmp(e) => e.class(),
        }
    }
}

/// How to start a guardian: a program that calls [`guard`] when given `--qmp SOCKET
/// --marker FILE` after `args` (the `vmattest` binary itself, through a hidden subcommand).
#[derive(Debug, Clone)]
pub struct GuardProgram {
    pub program: PathBuf,
    pub args: Vec<std::ffi::OsString>,
}

/// What a guardian or a recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The capturer finished and resumed the guest itself.
    Finished,
    /// No pause of ours was left: no marker, or the guest was not paused.
    NothingToDo,
    /// The guest was paused by a capture that died; it runs again. Holds the state it was in.
    Resumed(String),
    /// QEMU is gone; the marker was removed.
    VmGone,
}

pub fn marker_path(spec: &VmSpec) -> PathBuf {
    spec.run_dir().join(MARKER)
}

/// A pause in progress: its marker and, when one was started, its guardian.
#[derive(Debug)]
pub struct Armed {
    marker: PathBuf,
    guardian: Option<(Child, ChildStdin)>,
}

/// Writes the pause marker and starts the guardian; call before `stop`.
pub(crate) fn arm(spec: &VmSpec, program: Option<&GuardProgram>) -> Result<Armed, GuardError> {
    let qmp = spec.qmp_path();
    arm_at(&marker_path(spec), &["--qmp".into(), qmp.into()], program)
}

/// [`arm`] for any guest: the marker at `marker`, and a guardian given `target` (how it
/// reaches the guest's monitor) before `--marker FILE`.
pub fn arm_at(
    marker: &Path,
    target: &[std::ffi::OsString],
    program: Option<&GuardProgram>,
) -> Result<Armed, GuardError> {
    let marker = marker.to_path_buf();
    write_owner(&marker).map_err(|source| GuardError::Io {
        path: marker.clone(),
        source,
    })?;
    let guardian = match program {
        None => None,
        Some(p) => match spawn(p, target, &marker) {
            Ok(g) => Some(g),
            Err(e) => {
                remove(&marker);
                return Err(e);
            }
        },
    };
    Ok(Armed { marker, guardian })
}

fn spawn(
    p: &GuardProgram,
    target: &[std::ffi::OsString],
    marker: &Path,
) -> Result<(Child, ChildStdin), GuardError> {
    let mut child = Command::new(&p.program)
        .args(&p.args)
        .args(target)
        .arg("--marker")
        .arg(marker)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        // Its own group: a Ctrl-C or a signal to the capturer's group must not take it along.
        .process_group(0)
        .spawn()
        .map_err(|source| GuardError::Spawn {
            program: p.program.clone(),
            source,
        })?;
    match child.stdin.take() {
        Some(stdin) => Ok((child, stdin)),
        None => {
            child.kill().ok();
            child.wait().ok();
            Err(GuardError::Spawn {
                program: p.program.clone(),
                source: io::Error::other("no stdin pipe"),
            })
        }
    }
}

impl Armed {
    /// The guest runs again: tell the guardian, wait for it, remove the marker.
    pub(crate) fn disarm(self) {
        if let Some((mut child, mut stdin)) = self.guardian {
            let _ = writeln!(stdin, "{DONE}");
            drop(stdin);
            child.wait().ok();
        }
        remove(&self.marker);
    }

    /// Resuming failed: leave the marker and let the guardian (or the next command) retry
    /// once this process lets go of the monitor.
    pub(crate) fn abandon(self) {
        if let Some((child, stdin)) = self.guardian {
            drop(stdin);
            drop(child); // not waited for: it waits for the monitor this process still holds
        }
    }
}

/// The guardian: waits for [`DONE`] on `input`; at end of file without it, resumes the guest
/// paused by the capture that wrote `marker`.
pub fn guard(qmp_path: &Path, marker: &Path, input: impl Read) -> Result<Outcome, GuardError> {
    if let Some(outcome) = await_capturer(marker, input)? {
        return Ok(outcome);
    }
    // A refused or missing socket means QEMU is gone; a busy monitor means the capturer
    // still unwinds, and is waited for.
    let mut qmp = match Qmp::connect_busy(qmp_path, Duration::from_secs(1), GUARD_CONNECT) {
        Ok(q) => q,
        Err(QmpError::Connect { .. }) => {
            remove(marker);
            return Ok(Outcome::VmGone);
        }
        Err(e) => return Err(e.into()),
    };
    resume(&mut qmp, marker)
}

/// The first half of a guardian: waits for [`DONE`] on `input`. `Some` when there is nothing
/// to resume; `None` when the capturer died with its pause marked, and the guest must be
/// resumed ([`resume`]).
pub fn await_capturer(marker: &Path, input: impl Read) -> Result<Option<Outcome>, GuardError> {
    let mut line = Vec::new();
    // Only a short line is expected; anything else counts as no "done".
    let read = input.take(64).read_to_end(&mut line);
    if read.is_ok() && line.trim_ascii() == DONE.as_bytes() {
        return Ok(Some(Outcome::Finished));
    }
    if read_marker(marker)?.is_none() {
        return Ok(Some(Outcome::NothingToDo));
    }
    Ok(None)
}

/// On a command's fresh QMP session: a marker left by a capturer that is no longer alive
/// means the guest may be paused by nobody; resume it. A live capturer's marker is left alone.
pub fn recover(spec: &VmSpec, qmp: &mut Qmp) -> Result<Outcome, GuardError> {
    let marker = marker_path(spec);
    match read_marker(&marker)? {
        Some(owner) if !owner.alive() => resume(qmp, &marker),
        _ => Ok(Outcome::NothingToDo),
    }
}

/// Ends a migration the capturer left running, resumes a paused guest, removes the marker and
/// the capturer's scratch directory.
pub fn resume(qmp: &mut dyn Monitor, marker: &Path) -> Result<Outcome, GuardError> {
    let owner = read_marker(marker)?;
    let info = qmp.execute("query-migrate", serde_json::Value::Null)?;
    let migrating = info
        .get("status")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|s| !matches!(s, "none" | "completed" | "failed" | "cancelled"));
    if migrating {
        qmp.execute("migrate_cancel", serde_json::Value::Null)?;
        let deadline = Instant::now() + MIGRATION_END;
        while Instant::now() < deadline {
            let info = qmp.execute("query-migrate", serde_json::Value::Null)?;
            let status = info.get("status").and_then(serde_json::Value::as_str);
            if matches!(status, None | Some("completed" | "failed" | "cancelled")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let status = qmp.query_status()?;
    let outcome = if matches!(status.as_str(), "paused" | "postmigrate" | "finish-migrate") {
        if status == "finish-migrate" {
            qmp.wait_status("postmigrate", MIGRATION_END).ok();
        }
        qmp.cont()?;
        Outcome::Resumed(status)
    } else {
        Outcome::NothingToDo
    };
    remove(marker);
    if let (Some(owner), Some(dir)) = (owner, marker.parent()) {
        let _ = std::fs::remove_dir_all(dir.join(format!(".capture.{}", owner.pid)));
    }
    Ok(outcome)
}

/// Writes a marker naming this process (its pid and start time) to `path`, 0600.
pub(crate) fn write_owner(path: &Path) -> io::Result<()> {
    let me = std::process::id();
    let start = start_time(me).unwrap_or(0);
    let text = format!("{MARKER_MAGIC}\npid {me}\nstart {start}\n");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
}

/// Whether the marker at `path` names a process that is gone. A missing or foreign file names
/// nobody, so it is not.
pub(crate) fn owner_gone(path: &Path) -> bool {
    matches!(read_marker(path), Ok(Some(owner)) if !owner.alive())
}

/// The process named by a marker.
#[derive(Debug)]
struct Owner {
    pid: u32,
    start: u64,
}

impl Owner {
    /// Alive and the same process (a recycled pid has another start time); a zombie is dead.
    fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let state = rest.split_whitespace().next();
        state != Some("Z") && state != Some("X") && parse_start(rest) == Some(self.start)
    }
}

fn read_marker(path: &Path) -> Result<Option<Owner>, GuardError> {
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => {
            f.take(4096)
                .read_to_string(&mut text)
                .map_err(|source| GuardError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(GuardError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let mut lines = text.lines();
    let field = |line: Option<&str>, key: &str| {
        line.and_then(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    if lines.next() != Some(MARKER_MAGIC) {
        return Ok(None); // not ours
    }
    let pid = field(lines.next(), "pid ");
    let start = field(lines.next(), "start ");
    Ok(match (pid, start) {
        (Some(pid), Some(start)) => Some(Owner {
            pid: u32::try_from(pid).unwrap_or(0),
            start,
        }),
        // A half-written marker: its writer was killed before it could pause anything.
        _ => Some(Owner { pid: 0, start: 0 }),
    })
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start(&stat[stat.rfind(')')? + 1..])
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks), from the text after the `)`
/// that closes the command name.
fn parse_start(after_comm: &str) -> Option<u64> {
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_wrong_start_is_not() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert!(Owner { pid: me, start }.alive());
        assert!(
            !Owner {
                pid: me,
                start: start + 1
            }
            .alive()
        );
        assert!(!Owner { pid: 0, start: 0 }.alive());
    }

    #[test]
    fn done_line_finishes_without_touching_qemu() {
        let dir = std::env::temp_dir();
        let out = guard(&dir.join("no.sock"), &dir.join("no.marker"), &b"done\n"[..]).unwrap();
        assert_eq!(out, Outcome::Finished);
        // End of file with no marker: nothing of ours to resume.
        let out = guard(&dir.join("no.sock"), &dir.join("no.marker"), &b""[..]).unwrap();
        assert_eq!(out, Outcome::NothingToDo);
    }
}
