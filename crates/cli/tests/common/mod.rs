//! Shared helpers for the CLI tests: run the built binary, make VM-like images, call oracles.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

pub mod domain;
pub mod fixture;
pub mod guest;
pub mod runtime;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
#[allow(unused_imports)]
pub use vmattest_testkit::images::vm_like;

pub const PAGE: usize = 4096;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn vmattest<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .args(args)
        .output()
        .expect("run vmattest");
    to_run(out)
}

/// [`vmattest`] with `envs` set (test hooks).
pub fn vmattest_env(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run vmattest");
    to_run(out)
}

/// A temp path as an argument (temp paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a whitespace-separated command line (temp paths have no spaces).
pub fn cli(line: &str) -> Run {
    vmattest(line.split_whitespace())
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vmattest"))
}

/// Runs a copy of vmattest at `exe`.
pub fn run_program(exe: &Path, args: &[&str]) -> Run {
    to_run(Command::new(exe).args(args).output().expect("run vmattest"))
}

fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success, stderr: {}", self.stderr);
        self
    }

    /// Asserts the exit code and a single-line error that mentions `needle`.
    pub fn fails(self, code: i32, needle: &str) -> Run {
        assert_eq!(
            self.code, code,
            "stderr: {} stdout: {}",
            self.stderr, self.stdout
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, got: {:?}",
            self.stderr
        );
        assert!(lines[0].starts_with("vmattest: "), "{}", lines[0]);
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} in {:?}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("bad JSON {e}: {}", self.stdout))
    }
}

pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Runs an oracle tool; a missing tool fails the test with the install hint.
pub fn oracle(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("oracle {tool} not runnable ({e}); run scripts/install-deps.sh as root")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn b3sum(path: &Path) -> String {
    oracle("b3sum", &["--no-names", path.to_str().unwrap()])
        .trim()
        .to_owned()
}

/// Root hash printed by `veritysetup format`; `salt` is hex or "-".
pub fn veritysetup_root(data: &Path, hash_dev: &Path, alg: &str, salt: &str) -> String {
    let out = oracle(
        "veritysetup",
        &[
            "format",
            "--hash",
            alg,
            "--salt",
            salt,
            "--data-block-size",
            "4096",
            "--hash-block-size",
            "4096",
            data.to_str().unwrap(),
            hash_dev.to_str().unwrap(),
        ],
    );
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|s| s.trim().to_owned())
        .expect("veritysetup printed no root hash")
}

/// Runs vmattest with a deadline: a hang fails the test instead of stalling the suite.
pub fn vmattest_within(args: &[&str], limit: std::time::Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("vmattest {args:?} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A signing key (`DIR/key`, made once per directory) and a new store `DIR/store-NAME` for
/// the VM (or domain) `name`.
pub struct Chain {
    pub store: PathBuf,
    pub key: PathBuf,
    pub pubkey: PathBuf,
}

impl Chain {
    /// `snapshot restore` of `seq` under the pinned key, before the target's arguments.
    pub fn restore_args(&self, seq: u64) -> Vec<String> {
        [
            "snapshot",
            "restore",
            "--store",
            self.store.to_str().unwrap(),
            "--pubkey",
            self.pubkey.to_str().unwrap(),
            "--seq",
            &seq.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Component `name` at `seq`, rebuilt and verified from the chain.
    pub fn component_at(&self, seq: u64, name: &str, scratch: &Path) -> Vec<u8> {
        let out = scratch.join(format!("out-{seq}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut args = self.restore_args(seq);
        args.extend(["--out".to_owned(), out.to_str().unwrap().to_owned()]);
        vmattest(args).ok();
        let bytes = std::fs::read(out.join(name)).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
        bytes
    }
}

pub fn chain(dir: &Path, name: &str) -> Chain {
    let key = dir.join("key");
    if !key.exists() {
        vmattest(["keygen", "--alg", "ed25519", "--out", key.to_str().unwrap()]).ok();
    }
    let store = dir.join(format!("store-{name}"));
    vmattest([
        "snapshot",
        "init",
        "--store",
        store.to_str().unwrap(),
        "--vm-id",
        name,
    ])
    .ok();
    Chain {
        store,
        key,
        pubkey: dir.join("key.pub"),
    }
}

/// The component names of a take's or a report's JSON.
pub fn component_names(j: &serde_json::Value) -> Vec<&str> {
    j["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

/// The text the test guest wrote into 4 KiB block `tick % 256` of its disk at `tick`.
pub fn disk_block(disk: &[u8], tick: u64) -> String {
    let at = (tick % 256) as usize * 4096;
    String::from_utf8_lossy(&disk[at..at + 4096])
        .trim_end_matches('\0')
        .trim()
        .to_owned()
}

/// The newest tick whose block a disk holds (a test runs for far fewer than 256 ticks).
pub fn newest_block(disk: &[u8]) -> u64 {
    (0..256u64)
        .filter_map(|b| disk_block(disk, b).strip_prefix("disk tick ")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// What every capture of a running test guest reports: link `seq`, a pause, the `components`,
/// and (for a delta of an idle guest) a small fraction of its pages changed.
pub fn check_capture(j: &serde_json::Value, seq: u64, components: &[&str]) {
    assert_eq!(j["seq"], seq);
    assert!(j["downtime_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(component_names(j), components);
    if seq > 0 {
        let changed = j["changed_pages"].as_u64().unwrap();
        let total = j["total_pages"].as_u64().unwrap();
        assert!(changed * 10 < total, "{changed} of {total} pages changed");
    }
}

/// Flips a byte in the middle of the store's first page batch; returns the file and its bytes
/// before, to put back.
pub fn tamper_baseline_batch(store: &Path) -> (PathBuf, Vec<u8>) {
    let victim = baseline_batch(store);
    let original = std::fs::read(&victim).unwrap();
    let mut bad = original.clone();
    let n = bad.len();
    bad[n / 2] ^= 0x40;
    std::fs::write(&victim, &bad).unwrap();
    (victim, original)
}

/// The first page batch the baseline wrote: the oldest batch object (kind 6 in its header).
pub fn baseline_batch(store: &Path) -> PathBuf {
    let mut batches: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for d in std::fs::read_dir(store.join("objects")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            if bytes.get(8..10) == Some(&[0, 6]) {
                batches.push((p.metadata().unwrap().modified().unwrap(), p));
            }
        }
    }
    batches.into_iter().min().unwrap().1
}

/// Starts vmattest with `args` and the `fault-injection` hook `VMATTEST_HOLD_AT=point`, and
/// returns once it says it holds there.
pub fn spawn_held<S: AsRef<std::ffi::OsStr>>(args: &[S], point: &str) -> std::process::Child {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .args(args)
        .env("VMATTEST_HOLD_AT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("holding at") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("vmattest never reached its hold point");
    assert!(line.contains(point), "{line}");
    child
}
