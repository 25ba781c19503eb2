//! The machine interface, the same in every command: one class and exit code per failure,
//! one JSON error object under `--json`, RFC 3339 times, a closed or full stdout ending the
//! command without a panic, and `-` for standard input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

struct Keys {
    key: PathBuf,
    public: PathBuf,
    other_public: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    let key = dir.join("k");
    let other = dir.join("other");
    vmattest(["keygen", "--alg", "ed25519", "--out", s(&key)]).ok();
    vmattest(["keygen", "--alg", "ed25519", "--out", s(&other)]).ok();
    Keys {
        public: dir.join("k.pub"),
        other_public: dir.join("other.pub"),
        key,
    }
}

/// A store of two links over one small image.
fn store(dir: &Path, k: &Keys) -> PathBuf {
    let store = dir.join("store");
    let img = write(dir, "mem.img", &vm_like(64 * PAGE, 1));
    vmattest(["snapshot", "init", "--store", s(&store), "--vm-id", "v"]).ok();
    for seed in [1, 2] {
        std::fs::write(&img, vm_like(64 * PAGE, seed)).unwrap();
        vmattest([
            "snapshot",
            "take",
            "--store",
            s(&store),
            "--memory",
            s(&img),
            "--key",
            s(&k.key),
        ])
        .ok();
    }
    store
}

/// A failure under `--json`: exactly one object on stdout, with the class's code.
fn json_failure(r: &Run, code: &str) {
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {}", r.stdout);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["code"], code, "{v}");
    let error = v["error"].as_str().unwrap();
    assert_eq!(r.stderr.trim(), format!("vmattest: {error}"));
}

#[test]
fn regression_unpinned_key_is_a_verification_failure_in_every_command() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let img = write(d, "img", &vm_like(16 * PAGE, 3));
    let rec = d.join("rec");
    vmattest(["sign", "--key", s(&k.key), "--out", s(&rec), s(&img)]).ok();
    let other = s(&k.other_public);
    vmattest(["verify", "--pubkey", other, s(&rec)]).fails(1, "expected one of the given");
    let store = store(d, &k);
    vmattest([
        "snapshot",
        "verify",
        "--store",
        s(&store),
        "--pubkey",
        other,
    ])
    .fails(1, "signature");
    let r = vmattest([
        "--json",
        "snapshot",
        "verify",
        "--store",
        s(&store),
        "--pubkey",
        other,
    ]);
    assert_eq!(r.code, 1);
    json_failure(&r, "verification_failed");
    let proof = d.join("proof");
    vmattest(["prove", "--page", "1", "--out", s(&proof), s(&img)]).ok();
    vmattest([
        "verify-proof",
        "--record",
        s(&rec),
        "--pubkey",
        other,
        s(&proof),
    ])
    .fails(1, "expected one of the given");
}

#[test]
fn regression_truncated_input_is_bad_input_in_every_command() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let img = write(d, "img", &vm_like(16 * PAGE, 3));
    let rec = d.join("rec");
    vmattest(["sign", "--key", s(&k.key), "--out", s(&rec), s(&img)]).ok();
    let bytes = std::fs::read(&rec).unwrap();
    let cut = write(d, "cut", &bytes[..bytes.len() / 2]);
    vmattest(["verify", "--pubkey", s(&k.public), s(&cut)]).fails(2, "cut");
    vmattest([
        "config",
        "verify-disclosure",
        "--pubkey",
        s(&k.public),
        s(&cut),
    ])
    .fails(2, "cut");
    vmattest(["verify-proof", "--root", "00", s(&cut)]).fails(2, "cut");
    let r = vmattest(["--json", "verify-proof", "--root", "00", s(&cut)]);
    assert_eq!(r.code, 2);
    json_failure(&r, "bad_input");
}

#[test]
fn regression_json_failure_is_one_object_in_commands_that_printed_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let missing = d.join("missing.toml");
    for args in [
        vec![
            "--json",
            "vm",
            "launch",
            "--vm",
            s(&missing),
            "--reference",
            s(&missing),
            "--key",
            s(&missing),
        ],
        vec!["--json", "measure", s(&missing)],
        vec![
            "--json",
            "config",
            "measure",
            "--vm",
            s(&missing),
            "--key",
            s(&missing),
            "--out",
            s(d),
        ],
    ] {
        let r = vmattest(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        json_failure(&r, "bad_input");
    }
}

#[test]
fn regression_times_are_rfc3339_in_text_and_json() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let store = store(d, &k);
    let r = vmattest(["--json", "snapshot", "log", "--store", s(&store)]).ok();
    for line in r.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let time = v["time"].as_str().unwrap();
        assert!(is_rfc3339(time), "{time}");
    }
    let r = vmattest(["snapshot", "log", "--store", s(&store)]).ok();
    let time = r.stdout.split_whitespace().nth(2).unwrap();
    assert!(is_rfc3339(time), "{}", r.stdout);
    let r = vmattest([
        "snapshot",
        "verify",
        "--store",
        s(&store),
        "--pubkey",
        s(&k.public),
    ])
    .ok();
    assert!(!r.stdout.contains("..="), "{}", r.stdout);
    let r = vmattest(["snapshot", "fsck", "--store", s(&store)]).ok();
    assert!(!r.stdout.contains("Some("), "{}", r.stdout);
}

/// `2026-12-06T10:55:01Z` or with a fraction: checked with the system's `date`.
fn is_rfc3339(text: &str) -> bool {
    text.len() >= 20
        && text.ends_with('Z')
        && text.as_bytes()[10] == b'T'
        && Command::new("date")
            .args(["-u", "-d", text, "+%s"])
            .output()
            .is_ok_and(|o| o.status.success())
}

#[test]
fn regression_closed_stdout_ends_quietly_without_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let store = store(d, &k);
    for args in [
        vec!["snapshot", "log", "--store", s(&store)],
        vec!["--json", "snapshot", "log", "--store", s(&store)],
    ] {
        // The reader is gone before the command starts.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_vmattest"))
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert_ne!(out.status.code(), Some(101), "{args:?}");
        assert!(stderr.is_empty(), "{stderr}");
    }
}

#[test]
fn regression_full_stdout_is_an_environment_error_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let store = store(d, &k);
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .args(["snapshot", "log", "--store", s(&store)])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("writing to standard output"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn regression_dash_reads_standard_input() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let img = write(d, "img", &vm_like(16 * PAGE, 3));
    let rec = d.join("rec");
    vmattest(["sign", "--key", s(&k.key), "--out", s(&rec), s(&img)]).ok();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmattest"))
        .args(["--json", "verify", "--pubkey", s(&k.public), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&rec).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn regression_secret_flag_is_the_same_at_init_and_after() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let store = d.join("enc");
    let secret = d.join("secret");
    vmattest([
        "snapshot",
        "init",
        "--store",
        s(&store),
        "--vm-id",
        "v",
        "--secret",
        s(&secret),
    ])
    .ok();
    let img = write(d, "mem.img", &vm_like(16 * PAGE, 5));
    vmattest([
        "snapshot",
        "take",
        "--store",
        s(&store),
        "--memory",
        s(&img),
        "--key",
        s(&k.key),
        "--secret",
        s(&secret),
    ])
    .ok();
    vmattest([
        "snapshot",
        "verify",
        "--store",
        s(&store),
        "--pubkey",
        s(&k.public),
        "--secret",
        s(&secret),
    ])
    .ok();
}

#[test]
fn regression_one_failure_names_its_os_error_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let store = store(d, &k);
    let missing = d.join("missing.img");
    for args in [
        vec!["measure", s(&missing)],
        vec![
            "snapshot",
            "take",
            "--store",
            s(&store),
            "--memory",
            s(&missing),
            "--key",
            s(&k.key),
        ],
        vec!["verify", "--pubkey", s(&missing), s(&missing)],
    ] {
        let r = vmattest(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        let lower = r.stderr.to_lowercase();
        assert_eq!(lower.matches("no such file").count(), 1, "{}", r.stderr);
        assert_eq!(r.stderr.matches("missing.img").count(), 1, "{}", r.stderr);
    }
}

#[test]
fn regression_fifo_as_token_or_secret_file_never_hangs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let k = keys(d);
    let store = store(d, &k);
    let fifo = d.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let limit = std::time::Duration::from_secs(20);
    let fifo = s(&fifo);
    vmattest_within(
        &[
            "remote",
            "--server",
            "http://127.0.0.1:9",
            "--token-file",
            fifo,
            "tokens",
        ],
        limit,
    )
    .fails(2, "regular file");
    vmattest_within(
        &[
            "snapshot",
            "verify",
            "--store",
            s(&store),
            "--pubkey",
            s(&k.public),
            "--secret",
            fifo,
        ],
        limit,
    )
    .fails(2, "fifo");
}
