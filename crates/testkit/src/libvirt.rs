//! A private libvirt daemon per test: `libvirtd` in session mode, run as the unprivileged
//! user [`DAEMON_USER`] with every directory it uses (config, state, sockets, logs, and the
//! shared RAM files of its domains) under a temporary directory, stopped by PID on drop after
//! its domains are destroyed. Several run side by side without touching `/etc/libvirt`,
//! `/var/lib/libvirt` or `/run/libvirt`. Root (the tests) connects to its socket with
//! `qemu:///session?socket=PATH`.
//!
//! Its QEMU runs as [`DAEMON_USER`]: files a domain uses (kernel, disks, console log) must be
//! readable or writable by that user; [`PrivateLibvirt::give`] hands them over.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{Gid, Uid, chown};
use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

/// The system user private daemons run as (created on first use).
pub const DAEMON_USER: &str = "vmattest-test";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Free space /dev/shm needs to hold the test domains' RAM.
const MIN_SHM_BYTES: u64 = 2 << 30;

/// A running private libvirtd owned by this process.
#[derive(Debug)]
pub struct PrivateLibvirt {
    child: Child,
    uri: String,
    dir: PathBuf,
    ram: PathBuf,
    uid: u32,
    gid: u32,
    _temp: TempDir,
}

impl PrivateLibvirt {
    /// Whether `libvirtd` and `virsh` are installed.
    pub fn available() -> bool {
        ["/usr/sbin/libvirtd", "/usr/bin/virsh"]
            .iter()
            .all(|p| Path::new(p).is_file())
    }

    pub fn start() -> Result<PrivateLibvirt, String> {
        if !Self::available() {
            return Err("libvirtd or virsh not found: run scripts/install-deps.sh".into());
        }
        let (uid, gid) = daemon_user()?;
        let temp = tempfile::Builder::new()
            .prefix("vmattest-libvirt.")
            .tempdir_in("/tmp")
            .map_err(|e| format!("create a temporary directory: {e}"))?;
        let dir = temp.path().to_path_buf();
        // The daemon's RAM files on tmpfs, as on a host with memory_backing_dir there; in the
        // temporary directory when /dev/shm is small (a container's 64 MiB).
        let shm = Path::new("/dev/shm");
        let roomy = rustix::fs::statvfs(shm)
            .is_ok_and(|v| v.f_bavail.saturating_mul(v.f_frsize) >= MIN_SHM_BYTES);
        let ram = if roomy {
            shm.join(dir.file_name().unwrap_or_default())
        } else {
            dir.join("ram")
        };
        let sub = ["home", "config/libvirt", "cache", "run", "data", "vm"];
        for d in sub.iter().map(|s| dir.join(s)).chain([ram.clone()]) {
            fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        fs::write(
            dir.join("config/libvirt/qemu.conf"),
            format!("memory_backing_dir = \"{}\"\n", ram.display()),
        )
        .map_err(|e| format!("write qemu.conf: {e}"))?;
        fs::write(
            dir.join("config/libvirt/libvirtd.conf"),
            format!(
                "log_outputs = \"3:file:{}\"\n",
                dir.join("libvirtd.log").display()
            ),
        )
        .map_err(|e| format!("write libvirtd.conf: {e}"))?;
        let lv = PrivateLibvirt {
            child: spawn(&dir, &ram, uid, gid)?,
            uri: format!(
                "qemu:///session?socket={}",
                dir.join("run/libvirt/libvirt-sock").display()
            ),
            dir,
            ram,
            uid,
            gid,
            _temp: temp,
        };
        let mut lv = lv;
        lv.wait_ready()?;
        Ok(lv)
    }

    /// `qemu:///session?socket=...`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// A directory for a test's domain files, owned by the daemon's user.
    pub fn vm_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }

    /// Where the daemon's domains keep their RAM files.
    pub fn ram_dir(&self) -> &Path {
        &self.ram
    }

    /// Makes `path` the daemon user's, so that its QEMU can use it.
    pub fn give(&self, path: &Path) -> Result<(), String> {
        chown(
            path,
            Some(Uid::from_raw(self.uid)),
            Some(Gid::from_raw(self.gid)),
        )
        .map_err(|e| format!("chown {}: {e}", path.display()))
    }

    /// Runs `virsh -c URI ARGS...`.
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run virsh: {e}"))
    }

    /// `virsh ARGS` that must succeed; its stdout, trimmed.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default();
                return Err(format!("libvirtd exited ({status}): {}", log.trim()));
            }
            let out = self.virsh(&["version"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "libvirtd did not answer within {START_TIMEOUT:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl PrivateLibvirt {
    /// Restarts the daemon (its domains run on, as on a host): libvirt looks for hooks only
    /// when it starts.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop_daemon();
        self.child = spawn(&self.dir, &self.ram, self.uid, self.gid)?;
        self.wait_ready()
    }

    fn stop_daemon(&mut self) {
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            kill_process(pid, Signal::TERM).ok();
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                kill_process(pid, Signal::KILL).ok();
                let _ = self.child.wait();
            }
        }
    }
}

impl Drop for PrivateLibvirt {
    fn drop(&mut self) {
        // Domains first: their QEMUs are the daemon's children only in name.
        let names = self.virsh(&["list", "--all", "--name"]);
        for name in String::from_utf8_lossy(&names.stdout).lines() {
            let name = name.trim();
            if !name.is_empty() {
                let _ = self.virsh(&["destroy", name]);
                let _ = self.virsh(&["undefine", name]);
            }
        }
        self.stop_daemon();
        // The log daemon it started would linger until its idle timeout.
        for helper in ["virtlogd", "virtlockd"] {
            let pidfile = self.dir.join(format!("run/libvirt/{helper}.pid"));
            let pid = fs::read_to_string(pidfile).ok();
            if let Some(pid) = pid
                .and_then(|p| p.trim().parse().ok())
                .and_then(Pid::from_raw)
            {
                kill_process(pid, Signal::TERM).ok();
            }
        }
        let _ = fs::remove_dir_all(&self.ram);
    }
}

/// libvirtd in the foreground as the daemon user (setpriv execs it: the child's PID is the
/// daemon's), with its XDG directories in `dir` and its domains' RAM files in `ram`.
fn spawn(dir: &Path, ram: &Path, uid: u32, gid: u32) -> Result<Child, String> {
    for entry in walk(dir).into_iter().chain([ram.to_path_buf()]) {
        chown(&entry, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| format!("chown {}: {e}", entry.display()))?;
    }
    fs::set_permissions(dir.join("run"), fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("chmod: {e}"))?;
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg("--")
        .arg("/usr/sbin/libvirtd")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start libvirtd: {e}"))
}

/// `dir` and everything below it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() && !out[i].is_symlink() {
            let more: Vec<PathBuf> = fs::read_dir(&out[i])
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            out.extend(more);
        }
        i += 1;
    }
    out
}

/// The daemon user's uid and gid, creating the user when missing (the tests run as root).
fn daemon_user() -> Result<(u32, u32), String> {
    let find = || {
        fs::read_to_string("/etc/passwd")
            .ok()?
            .lines()
            .find_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                (f.len() >= 4 && f[0] == DAEMON_USER)
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
            })
    };
    if let Some(ids) = find() {
        return Ok(ids);
    }
    let out = Command::new("useradd")
        .args([
            "-r",
            "-U",
            "-M",
            "-d",
            "/nonexistent",
            "-s",
            "/usr/sbin/nologin",
        ])
        .arg(DAEMON_USER)
        .output()
        .map_err(|e| format!("cannot run useradd: {e}"))?;
    // Another test may have created it meanwhile.
    find().ok_or_else(|| {
        format!(
            "no user {DAEMON_USER}, and useradd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}
