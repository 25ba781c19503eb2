//! Processes by pid, trusted only while they are still this VM's QEMU.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// True while `pid` is a live process whose arguments include `-name <name>`. A zombie has
/// an empty command line and so counts as gone.
pub(super) fn is_ours(pid: i32, name: &str) -> bool {
    let Ok(mut f) = File::open(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut cmdline = Vec::new();
    if f.by_ref().take(1 << 20).read_to_end(&mut cmdline).is_err() {
        return false;
    }
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"-name" && w[1] == name.as_bytes())
}

pub(super) fn wait_gone(pid: i32, name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_ours(pid, name) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Sends `sig`; a process that is already gone is not an error here.
pub(super) fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        kill_process(p, sig).ok();
    }
}

pub(super) fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
