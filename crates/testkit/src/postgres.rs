//! A private PostgreSQL cluster per test: `initdb` into a temporary directory, `postgres` on a
//! free loopback port with trust authentication for the user `vmattest`, stopped by PID on drop
//! (SIGINT for a fast shutdown, then SIGKILL) and its directory removed.
//!
//! PostgreSQL refuses to run as root: as root the server binaries run as the `postgres` system
//! user (through `setpriv`), and the cluster's directories are handed to that user. Clients
//! connect over TCP, so they may run as anyone.

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{Gid, Uid, chown};
use rustix::process::{Pid, Signal, geteuid, kill_process};
use tempfile::TempDir;

/// The superuser the cluster is initialised with (trust authentication, loopback only).
pub const PG_USER: &str = "vmattest";
/// The database [`Postgres::start`] creates.
pub const PG_DATABASE: &str = "vmattest";
/// Overrides where `initdb` and `postgres` are looked for.
pub const PG_BIN_ENV: &str = "VMATTEST_PG_BIN";
/// The system user the server runs as when the tests run as root.
const SYSTEM_USER: &str = "postgres";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
const KILL_GRACE: Duration = Duration::from_secs(3);
const START_TRIES: usize = 5;

/// A running PostgreSQL cluster owned by this process.
#[derive(Debug)]
pub struct Postgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    url: String,
    _temp: TempDir,
}

/// `uid:gid` of the system user the server runs as when we are root.
#[derive(Clone, Copy, Debug)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl Postgres {
    /// Whether the PostgreSQL server binaries (`initdb`, `postgres`) can be found.
    pub fn available() -> bool {
        bin_dir().is_some()
    }

    /// Starts a fresh cluster with the database [`PG_DATABASE`] owned by [`PG_USER`].
    pub fn start() -> Result<Postgres, String> {
        let bin = bin_dir().ok_or_else(|| {
            format!(
                "PostgreSQL server binaries not found (install the `postgresql` package, or set \
                 {PG_BIN_ENV} to the directory holding initdb and postgres)"
            )
        })?;
        let run_as = if geteuid().is_root() {
            Some(system_user()?)
        } else {
            None
        };
        let temp = temp_dir(run_as.is_some())?;
        let dir = temp.path().to_path_buf();
        let data = dir.join("data");
        let sock = dir.join("sock");
        for d in [&data, &sock] {
            fs::create_dir(d).map_err(|e| format!("create {}: {e}", d.display()))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod {}: {e}", d.display()))?;
        }
        if let Some(u) = run_as {
            // The server (running as the system user) only needs to pass through the top.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))
                .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
            for d in [&data, &sock] {
                chown(d, Some(Uid::from_raw(u.uid)), Some(Gid::from_raw(u.gid)))
                    .map_err(|e| format!("chown {}: {e}", d.display()))?;
            }
        }

        let out = server_command(&bin, "initdb", run_as, &dir)
            .arg("-D")
            .arg(&data)
            .args(["-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }

        let mut last = String::new();
        // Another process may take the port between the probe and the server's bind: retry.
        for _ in 0..START_TRIES {
            match try_start(&bin, run_as, &dir, &data, &sock) {
                Ok((child, port)) => {
                    let mut pg = Postgres {
                        child,
                        port,
                        bin,
                        dir,
                        url: String::new(),
                        _temp: temp,
                    };
                    pg.url = pg.create_database(PG_DATABASE)?;
                    return Ok(pg);
                }
                Err(e) => last = e,
            }
        }
        Err(format!("postgres did not start: {last}"))
    }

    /// `postgres://vmattest@127.0.0.1:PORT/vmattest`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The URL of database `name` on this cluster (not necessarily created).
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding this cluster's PostgreSQL binaries (`psql`, `createdb`, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Creates another database (names of `[a-z0-9_]`, at most 63) and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(format!(
                "database name {name:?}: expected 1-63 of [a-z0-9_]"
            ));
        }
        let out = Command::new(tool(&self.bin, "createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                PG_USER,
            ])
            .arg(name)
            .current_dir(&self.dir)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run createdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "createdb {name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(self.url_for(name))
    }

    fn wait_exit(&mut self, grace: Duration) -> bool {
        wait_exit(&mut self.child, grace)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The child is not reaped before this, so its pid cannot have been recycled.
        let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) else {
            return;
        };
        // SIGINT: fast shutdown (roll back open transactions, close connections, exit).
        kill_process(pid, Signal::INT).ok();
        if !self.wait_exit(STOP_GRACE) {
            kill_process(pid, Signal::KILL).ok();
            self.wait_exit(KILL_GRACE);
        }
    }
}

fn wait_exit(child: &mut Child, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() > deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `$VMATTEST_PG_BIN`, else Debian's `/usr/lib/postgresql/VERSION/bin` (highest version), else
/// the directory of an `initdb` on `PATH`.
fn bin_dir() -> Option<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os(PG_BIN_ENV) {
        let d = PathBuf::from(d);
        return has_server(&d).then_some(d);
    }
    let mut versions: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version: Option<Vec<u64>> = name.split('.').map(|p| p.parse().ok()).collect();
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version?, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| has_server(d))
}

fn tool(bin: &Path, name: &str) -> PathBuf {
    bin.join(name)
}

/// A command for a server binary, run as the system user when we are root.
fn server_command(bin: &Path, name: &str, run_as: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = match run_as {
        Some(u) => {
            // setpriv execs the program, so the child's PID is the server's own.
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--init-groups")
                .arg("--")
                .arg(tool(bin, name));
            c
        }
        None => Command::new(tool(bin, name)),
    };
    cmd.current_dir(cwd);
    cmd
}

/// The uid and gid of the `postgres` system user.
fn system_user() -> Result<RunAs, String> {
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == SYSTEM_USER).then(|| {
                Some(RunAs {
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                })
            })?
        })
        .ok_or_else(|| {
            format!(
                "running as root, and PostgreSQL refuses to: no `{SYSTEM_USER}` system user to run \
                 it as (install the `postgresql` package)"
            )
        })
}

/// A temporary directory; as root, one whose ancestors the system user can pass through.
fn temp_dir(as_other_user: bool) -> Result<TempDir, String> {
    let make = |base: &Path| {
        tempfile::Builder::new()
            .prefix("vmattest-pg.")
            .tempdir_in(base)
            .map_err(|e| format!("create a temporary directory in {}: {e}", base.display()))
    };
    let base = std::env::temp_dir();
    if !as_other_user || traversable(&base) {
        return make(&base);
    }
    let fallback = Path::new("/tmp");
    if traversable(fallback) {
        return make(fallback);
    }
    Err(format!(
        "{} is not traversable by the `{SYSTEM_USER}` user; set TMPDIR to a directory that is",
        base.display()
    ))
}

/// Whether every ancestor of `dir` (and `dir` itself) is searchable by others.
fn traversable(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    dir.ancestors().all(|d| {
        fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// Any port free right now (the listener is released before the server binds it).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn try_start(
    bin: &Path,
    run_as: Option<RunAs>,
    dir: &Path,
    data: &Path,
    sock: &Path,
) -> Result<(Child, u16), String> {
    let port = free_port()?;
    let log_path = dir.join(format!("postgres-{port}.log"));
    // A file, not a pipe: nobody drains a pipe while the server runs.
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut child = server_command(bin, "postgres", run_as, dir)
        .arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(sock)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run postgres: {e}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let pg_isready = tool(bin, "pg_isready");
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let err = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("postgres exited ({status}): {}", err.trim()));
        }
        // postmaster.pid says "ready" once this server (not another on the port) accepts.
        if ready(data, port)
            && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
            && (!pg_isready.is_file() || is_ready(&pg_isready, port, dir))
        {
            return Ok((child, port));
        }
        if Instant::now() > deadline {
            if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
                kill_process(pid, Signal::INT).ok();
            }
            if !wait_exit(&mut child, STOP_GRACE) {
                child.kill().ok();
                child.wait().ok();
            }
            let err = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "port {port} not ready after {START_TIMEOUT:?}: {}",
                err.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Line 4 of `postmaster.pid` is the port, line 8 the status.
fn ready(data: &Path, port: u16) -> bool {
    let Ok(text) = fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    lines.get(3).map(|l| l.trim()) == Some(port.to_string().as_str())
        && lines.get(7).map(|l| l.trim()) == Some("ready")
}

fn is_ready(pg_isready: &Path, port: u16, cwd: &Path) -> bool {
    Command::new(pg_isready)
        .args([
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            PG_USER,
        ])
        .args(["-d", "postgres", "-t", "5"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
