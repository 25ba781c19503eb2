//! Disk image conversion through `qemu-img`, for qcow2 disks: the chain stores the guest's
//! view of a disk (raw bytes), whatever its container format.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn run(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    wait(spawn(args)?)
}

fn spawn(args: &[&std::ffi::OsStr]) -> Result<Child, String> {
    Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu-img: {e}"))
}

/// Waits for a conversion started by [`spawn_to_raw`].
pub(crate) fn wait(child: Child) -> Result<(), String> {
    let out = child
        .wait_with_output()
        .map_err(|e| format!("qemu-img: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "qemu-img: {}",
        err.lines().last().unwrap_or("failed").trim()
    ))
}

/// Starts writing the guest-visible bytes of a qcow2 image to `raw`. `-U`: QEMU holds the
/// image's lock, and the VM is paused with its writes flushed.
pub(crate) fn spawn_to_raw(qcow2: &Path, raw: &Path) -> Result<Child, String> {
    spawn(&[
        "convert".as_ref(),
        "-U".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        qcow2.as_os_str(),
        raw.as_os_str(),
    ])
}

/// Replaces `qcow2` with a qcow2 image holding the bytes of `raw`.
pub(crate) fn from_raw(raw: &Path, qcow2: &Path) -> Result<(), String> {
    let tmp = qcow2.with_extension("vmattest-restore");
    run(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "raw".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        raw.as_os_str(),
        tmp.as_os_str(),
    ])?;
    // The new image holds guest bytes: it keeps the old image's mode (0600 for a new one),
    // not the one qemu-img's umask gave it.
    let mode = std::fs::metadata(qcow2).map_or(0o600, |m| m.permissions().mode() & 0o7777);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, qcow2).map_err(|e| format!("{}: {e}", qcow2.display()))
}
