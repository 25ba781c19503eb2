//! Disk image conversion through `qemu-img`, for qcow2 disks: the chain stores the guest's
//! view of a disk (raw bytes), whatever its container format.

use std::path::Path;
use std::process::Command;

fn run(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
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

/// Writes the guest-visible bytes of a qcow2 image to `raw`. `-U`: QEMU holds the image's
/// lock, and the VM is paused with its writes flushed.
pub(crate) fn to_raw(qcow2: &Path, raw: &Path) -> Result<(), String> {
    run(&[
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
    std::fs::rename(&tmp, qcow2).map_err(|e| format!("{}: {e}", qcow2.display()))
}
