//! Regressions, through the binary, for attacks with write access to a store or a bundle;
//! the store's own tests cover each finding in depth (crates/store/tests/hardening.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::guest::Guest;
use common::*;

/// A store for VM `vm_id` with one baseline of a small image, and its key pair.
fn store(dir: &Path, vm_id: &str) -> (PathBuf, PathBuf, PathBuf) {
    let root = dir.join(format!("store-{vm_id}"));
    let key = dir.join("key");
    if !key.exists() {
        vmattest(["keygen", "--alg", "ed25519", "--out", s(&key)]).ok();
    }
    vmattest(["snapshot", "init", "--store", s(&root), "--vm-id", vm_id]).ok();
    let img = write(dir, "mem.img", &vm_like(8 * 4096, 1));
    vmattest([
        "snapshot",
        "take",
        "--store",
        s(&root),
        "--key",
        s(&key),
        "--memory",
        &format!("ram={}", s(&img)),
    ])
    .ok();
    (root, key, dir.join("key.pub"))
}

#[test]
fn regression_take_of_one_vm_into_another_vms_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, key, _) = store(tmp.path(), "db7");
    let web1 = Guest::new(tmp.path(), "web1");
    let before = std::fs::read_dir(root.join("links")).unwrap().count();
    vmattest([
        "snapshot",
        "take",
        "--store",
        s(&root),
        "--key",
        s(&key),
        "--vm",
        web1.arg(),
    ])
    .fails(2, "holds the chain of VM \"db7\"");
    assert_eq!(
        std::fs::read_dir(root.join("links")).unwrap().count(),
        before
    );
}

#[test]
fn regression_store_json_pointed_at_another_vm_fails_fsck() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _, _) = store(tmp.path(), "db7");
    let meta = root.join("store.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text.replace("\"db7\"", "\"web1\"")).unwrap();
    let r = vmattest(["snapshot", "fsck", "--store", s(&root)]);
    assert_ne!(r.code, 0, "fsck passed an edited store.json: {}", r.stdout);
    assert!(
        (r.stdout.clone() + &r.stderr).contains("signed chain"),
        "{} {}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn regression_refused_import_into_a_foreign_directory_deletes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, public) = store(tmp.path(), "db7");
    let mine = tmp.path().join("mine");
    for d in ["tmp", "head", "objects", "links"] {
        std::fs::create_dir_all(mine.join(d)).unwrap();
        std::fs::write(mine.join(d).join("precious"), d).unwrap();
    }
    std::fs::write(mine.join("HEAD"), "mine").unwrap();
    let garbage = write(tmp.path(), "garbage", b"not a bundle");
    vmattest([
        "snapshot",
        "import",
        "--store",
        s(&mine),
        "--pubkey",
        s(&public),
        s(&garbage),
    ])
    .fails(2, "garbage");
    for d in ["tmp", "head", "objects", "links"] {
        assert_eq!(
            std::fs::read(mine.join(d).join("precious")).unwrap(),
            d.as_bytes()
        );
    }
    assert_eq!(std::fs::read(mine.join("HEAD")).unwrap(), b"mine");
}

#[test]
fn regression_fifo_planted_as_head_never_hangs_a_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _, public) = store(tmp.path(), "db7");
    let head = root.join("HEAD");
    std::fs::remove_file(&head).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&head)
        .status()
        .unwrap();
    assert!(made.success());
    let limit = Duration::from_secs(10);
    for args in [
        vec!["snapshot", "log", "--store", s(&root)],
        vec![
            "snapshot",
            "verify",
            "--store",
            s(&root),
            "--pubkey",
            s(&public),
        ],
        vec!["snapshot", "fsck", "--store", s(&root)],
    ] {
        let r = vmattest_within(&args, limit);
        assert_ne!(r.code, 0, "{args:?} accepted a FIFO as HEAD");
        assert!(
            (r.stdout.clone() + &r.stderr).contains("FIFO"),
            "{args:?}: {} {}",
            r.stdout,
            r.stderr
        );
    }
}
