//! Shared helpers: test files and the oracles (sha256sum, veritysetup, qemu-img).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Deterministic, non-repeating bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// A program from PATH or the sbin directories, where e2fsprogs and cryptsetup install.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("test tool {name} not found; run scripts/install-deps.sh"))
}

/// Runs an oracle tool and returns its stdout; failure fails the test.
pub fn oracle(name: &str, args: &[&str]) -> String {
    let out = Command::new(tool(name)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sha256sum FILE`.
pub fn sha256sum(path: &Path) -> String {
    let out = oracle("sha256sum", &[path.to_str().unwrap()]);
    out.split_whitespace().next().unwrap().to_string()
}

/// The root `veritysetup format` prints for `data` (SHA-256, no salt, 4 KiB blocks).
pub fn verity_root(data: &Path) -> String {
    let hash_dev = data.with_extension("verity-hash");
    std::fs::write(&hash_dev, b"").unwrap();
    let out = oracle(
        "veritysetup",
        &[
            "format",
            "--no-superblock",
            "--hash",
            "sha256",
            "--salt",
            "-",
            "--data-block-size",
            "4096",
            "--hash-block-size",
            "4096",
            data.to_str().unwrap(),
            hash_dev.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(&hash_dev).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|s| s.trim().to_string())
        .expect("veritysetup printed no root hash")
}

/// `qemu-img convert -O qcow2 RAW QCOW2`.
pub fn to_qcow2(raw: &Path, qcow2: &Path) {
    oracle(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ],
    );
}

/// `(name, value)` pairs, for comparing against a parameter list.
pub fn pairs(params: &[vmattest_vmconfig::Param]) -> Vec<(&str, &str)> {
    params
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect()
}
