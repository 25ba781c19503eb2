//! Test harness shared by the workspace's tests (a dev-dependency only): a private software
//! TPM per test. TCP server on a free port P, control channel on P + 1, state in a temporary
//! directory; stopped by PID on drop (SIGTERM, then SIGKILL). Also a private PostgreSQL
//! cluster per test ([`Postgres`]), and the tick counter of a test guest's console
//! ([`console`]), and deterministic images and error chains ([`images`]).

// Test support: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

pub mod console;
pub mod images;
mod libvirt;
mod postgres;
pub use libvirt::{DAEMON_USER, PrivateLibvirt};
pub use postgres::{PG_BIN_ENV, PG_DATABASE, PG_USER, Postgres};

/// Ports handed out by this test process, so parallel tests never pick the same pair.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

const START_TIMEOUT: Duration = Duration::from_secs(10);
const TERM_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    _state: TempDir,
}

/// A port P with P and P + 1 both free right now.
fn free_port_pair() -> u16 {
    let mut taken = TAKEN.lock().unwrap();
    let taken = taken.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let Some(ctrl) = port.checked_add(1) else {
            continue;
        };
        if taken.contains(&port) || taken.contains(&ctrl) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, ctrl)).is_ok() {
            taken.insert(port);
            taken.insert(ctrl);
            return port;
        }
    }
    panic!("no free pair of TCP ports found");
}

impl Swtpm {
    /// A swtpm manufactured like a real one: an EK certificate (from swtpm's local CA) in NV.
    pub fn start_with_ek_certificate() -> Swtpm {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new("swtpm_setup")
            .args([
                "--tpm2",
                "--ecc",
                "--create-ek-cert",
                "--overwrite",
                "--tpmstate",
            ])
            .arg(state.path())
            .output()
            .expect("run swtpm_setup (apt-get install swtpm-tools)");
        assert!(
            out.status.success(),
            "swtpm_setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::start_in(state)
    }

    pub fn start() -> Swtpm {
        Self::start_in(tempfile::tempdir().unwrap())
    }

    /// Starts swtpm on the TPM state in `state`.
    fn start_in(state: TempDir) -> Swtpm {
        let mut last = String::new();
        // Another process may grab a port between the probe and swtpm's bind: retry.
        for _ in 0..5 {
            match Self::try_start(state.path()) {
                Ok((child, port)) => {
                    return Swtpm {
                        child,
                        port,
                        _state: state,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("swtpm did not start: {last}");
    }

    fn try_start(state: &std::path::Path) -> Result<(Child, u16), String> {
        let port = free_port_pair();
        let ctrl = port + 1;
        let mut child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run swtpm: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    std::io::Read::read_to_string(&mut stderr, &mut err).ok();
                }
                release(port);
                return Err(format!("swtpm exited ({status}): {}", err.trim()));
            }
            // The probe connection is closed at once; swtpm then waits for the next client.
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok((child, port));
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                release(port);
                return Err(format!("port {port} not accepting after {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn wait_exit(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) if Instant::now() > deadline => return false,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // The child is not reaped before this, so its pid cannot have been recycled.
        let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) else {
            return;
        };
        kill_process(pid, Signal::TERM).ok();
        if !self.wait_exit(TERM_GRACE) {
            kill_process(pid, Signal::KILL).ok();
            self.wait_exit(TERM_GRACE);
        }
        release(self.port);
    }
}

/// Returns a port pair to the pool.
fn release(port: u16) {
    if let Ok(mut taken) = TAKEN.lock()
        && let Some(taken) = taken.as_mut()
    {
        taken.remove(&port);
        taken.remove(&(port + 1));
    }
}

/// The Python of the test oracles' venv (dilithium-py, PyJWT, joserfc), which
/// `scripts/install-deps.sh` makes in `${VMATTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmattest}/venv`.
pub fn oracle_python() -> std::path::PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let cache = non_empty("VMATTEST_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            non_empty("XDG_CACHE_HOME").map(|x| std::path::PathBuf::from(x).join("vmattest"))
        })
        .or_else(|| non_empty("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/vmattest")))
        .expect("none of VMATTEST_CACHE, XDG_CACHE_HOME, HOME is set");
    let python = cache.join("venv/bin/python");
    assert!(
        python.exists(),
        "the test oracles' venv is missing: {} does not exist; run scripts/install-deps.sh",
        python.display()
    );
    python
}
