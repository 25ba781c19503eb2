//! Regressions for attacks by whoever can write into a store directory or hand over a
//! bundle: each test is named after the finding it pins (docs/THREAT_MODEL.md lists them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use vmattest_core::chain::{ComponentKind, SeqNo};
use vmattest_core::wire::{Kind, Writer};
use vmattest_store::{Store, StoreError, StoreMeta};

fn chain(encrypted: bool, links: u64) -> (Fixture, PathBuf) {
    let mut fx = Fixture::new("blake3", encrypted);
    let mp = fx.path("mem.img");
    let mut mem = vm_like(40 * PAGE, 1);
    for round in 0..links {
        std::fs::write(&mp, &mem).unwrap();
        fx.take(&[("mem", ComponentKind::Memory, &mp)]);
        mutate(&mut mem, 6, round + 1);
    }
    std::fs::write(&mp, &mem).unwrap();
    (fx, mp)
}

fn take(fx: &mut Fixture, mp: &Path) -> Result<(), StoreError> {
    fx.try_take(&[("mem", ComponentKind::Memory, mp)])
        .map(|_| ())
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs `f` on a thread and fails the test if it does not return within `secs`: a FIFO
/// must never hang a store operation.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("the store operation hung")
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// A bundle's frames (tag, bytes) after its header, and the header bytes.
fn frames(bundle: &[u8]) -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
    let body = u32::from_be_bytes(bundle[12..16].try_into().unwrap()) as usize;
    let header = bundle[..16 + body].to_vec();
    let mut at = 16 + body;
    let mut out = Vec::new();
    while bundle[at] != 0xff {
        let len = u32::from_be_bytes(bundle[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push((bundle[at], bundle[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    (header, out)
}

/// A bundle with a valid trailer around `header` and `frames`.
fn assemble(header: &[u8], frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = header.to_vec();
    for (tag, bytes) in frames {
        out.push(*tag);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let digest = blake3::hash(&out);
    out.push(0xff);
    out.extend_from_slice(digest.as_bytes());
    out
}

fn import(fx: &Fixture, root: &Path, bundle: &Path) -> Result<u64, StoreError> {
    let keys = fx.public();
    Store::import(root, bundle, &fx.opts(&keys, None)).map(|s| s.verified.seq.0)
}

#[test]
fn regression_refused_import_into_a_foreign_directory_deletes_nothing() {
    let (fx, _) = chain(false, 1);
    let dir = fx.path("mine");
    for d in ["tmp", "head", "objects", "links"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        std::fs::write(dir.join(d).join("precious"), d).unwrap();
    }
    for f in ["HEAD", "LOCK", "notes"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    let before = files(&dir);
    let garbage = fx.path("garbage");
    std::fs::write(&garbage, b"not a bundle at all").unwrap();
    assert!(import(&fx, &dir, &garbage).is_err());
    let good = fx.path("good");
    Store::open(&fx.store)
        .unwrap()
        .export(SeqNo(0), None, &good)
        .unwrap();
    // A valid bundle is refused too: the directory is not empty and not a store.
    assert!(import(&fx, &dir, &good).is_err());
    assert_eq!(files(&dir), before);
}

#[test]
fn regression_bundle_with_a_huge_seq_range_is_refused_without_panic() {
    let (fx, _) = chain(false, 1);
    let meta = serde_json::to_vec(Store::open(&fx.store).unwrap().meta()).unwrap();
    let mut w = Writer::new();
    w.bytes(&meta).u64(0).u64(u64::MAX);
    let bundle = fx.path("huge");
    std::fs::write(&bundle, assemble(&w.envelope(Kind::Bundle), &[])).unwrap();
    let target = fx.path("new");
    let err = import(&fx, &target, &bundle).unwrap_err();
    assert!(err.to_string().contains("expected at most"), "{err}");
    assert!(!target.exists(), "a refused import left a half-made store");
}

#[test]
fn regression_import_keeps_no_unsigned_object_frames() {
    let (fx, _) = chain(false, 2);
    let good = fx.path("good");
    Store::open(&fx.store)
        .unwrap()
        .export(SeqNo(0), None, &good)
        .unwrap();
    let (header, mut fr) = frames(&std::fs::read(&good).unwrap());
    fr.push((2, b"junk that no link names".to_vec()));
    let bad = fx.path("junk");
    std::fs::write(&bad, assemble(&header, &fr)).unwrap();
    let target = fx.path("target");
    let err = import(&fx, &target, &bad).unwrap_err();
    assert!(err.to_string().contains("not named by any link"), "{err}");
    assert!(!target.exists());

    // Import into an existing store: the junk is refused and nothing new is kept.
    let copy = fx.path("copy");
    let (_, fr0) = frames(&std::fs::read(&good).unwrap());
    let first_link = fr0.iter().skip(1).position(|(t, _)| *t == 1).unwrap() + 1;
    std::fs::write(&bad, assemble(&header_for(&fx, 0, 0), &fr0[..first_link])).unwrap();
    assert_eq!(import(&fx, &copy, &bad).unwrap(), 0);
    let before = files(&copy);
    let mut rest = fr0[first_link..].to_vec();
    rest.push((2, vec![7u8; 4096]));
    std::fs::write(&bad, assemble(&header_for(&fx, 1, 1), &rest)).unwrap();
    assert!(import(&fx, &copy, &bad).is_err());
    let after = files(&copy);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
}

fn header_for(fx: &Fixture, first: u64, last: u64) -> Vec<u8> {
    let meta = serde_json::to_vec(Store::open(&fx.store).unwrap().meta()).unwrap();
    let mut w = Writer::new();
    w.bytes(&meta).u64(first).u64(last);
    w.envelope(Kind::Bundle)
}

#[test]
fn regression_oversize_bundle_frame_is_refused_before_it_is_read() {
    let (fx, _) = chain(false, 1);
    let good = fx.path("good");
    Store::open(&fx.store)
        .unwrap()
        .export(SeqNo(0), None, &good)
        .unwrap();
    let (header, fr) = frames(&std::fs::read(&good).unwrap());
    // The link and manifest as exported, then a batch frame that claims 1 GiB.
    let mut bytes = header.clone();
    for (tag, b) in &fr[..2] {
        bytes.push(*tag);
        bytes.extend_from_slice(&(b.len() as u32).to_be_bytes());
        bytes.extend_from_slice(b);
    }
    bytes.push(2);
    bytes.extend_from_slice(&(1u32 << 30).to_be_bytes());
    bytes.extend_from_slice(&[0u8; 4096]);
    let bad = fx.path("big");
    std::fs::write(&bad, &bytes).unwrap();
    let target = fx.path("t");
    let t = Instant::now();
    let err = import(&fx, &target, &bad).unwrap_err();
    assert!(err.to_string().contains("object frame of"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!target.exists());
}

#[test]
fn regression_planted_symlink_at_a_head_cache_file_is_refused() {
    let (mut fx, mp) = chain(false, 2);
    let victim = fx.path("victim");
    std::fs::write(&victim, b"someone else's file").unwrap();
    let cached = fx.store.join("head/0.img");
    std::fs::remove_file(&cached).unwrap();
    symlink(&victim, &cached).unwrap();
    let mut mem = std::fs::read(&mp).unwrap();
    mutate(&mut mem, 3, 9);
    std::fs::write(&mp, &mem).unwrap();
    // The cache is derived data: the take either refuses the link or discards and rebuilds
    // the cache; it never writes through it.
    match take(&mut fx, &mp) {
        Err(err) => assert!(err.to_string().contains("head/0.img"), "{err}"),
        Ok(()) => assert!(cached.symlink_metadata().unwrap().is_file()),
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's file");
    // A committed file behind a symlink is refused, naming it.
    let link = fx.store.join(format!("links/{:020}.link", 0));
    let moved = fx.path("link0");
    std::fs::rename(&link, &moved).unwrap();
    symlink(&moved, &link).unwrap();
    let keys = fx.public();
    let err = Store::open(&fx.store)
        .unwrap()
        .verify(&fx.opts(&keys, None))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::FileType { .. }) && err.to_string().contains("symbolic link"),
        "{err}"
    );
}

#[test]
fn regression_fsck_repair_never_deletes_through_a_planted_symlink() {
    let (fx, _) = chain(false, 1);
    let outside = fx.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"keep me").unwrap();
    // objects/XX as a link to a directory elsewhere.
    symlink(&outside, fx.store.join("objects/zz")).unwrap();
    let s = Store::open_writer(&fx.store).unwrap();
    let rep = s.repair().unwrap();
    assert!(rep.is_clean(), "{:?}", rep.errors);
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep me");
    assert!(fx.store.join("objects/zz").symlink_metadata().is_err());
    drop(s);
    // tmp/ as a link to a directory elsewhere.
    std::fs::remove_dir_all(fx.store.join("tmp")).unwrap();
    symlink(&outside, fx.store.join("tmp")).unwrap();
    let err = Store::open_writer(&fx.store)
        .and_then(|s| s.repair())
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep me");
}

#[test]
fn regression_planted_fifos_never_hang_a_store_command() {
    let (fx, mp) = chain(false, 2);
    let link = fx.store.join(format!("links/{:020}.link", 1));
    let object = std::fs::read_dir(fx.store.join("objects"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    for target in [
        fx.store.join("HEAD"),
        fx.store.join("store.json"),
        link,
        object,
        fx.store.join("head/0.digests"),
        fx.store.join("head/stamp.json"),
    ] {
        let saved = std::fs::read(&target).unwrap();
        mkfifo(&target);
        let (store, keys, mp2) = (fx.store.clone(), fx.public(), mp.clone());
        let key = vmattest_sign::SecretKey::generate(vmattest_core::sig::SigAlg::Ed25519).unwrap();
        let verify = within(20, move || {
            let s = Store::open(&store)?;
            s.verify(&vmattest_store::ReplayOptions::new(&keys))?;
            let w = Store::open_writer(&store)?;
            w.fsck()?;
            let signers: [&dyn vmattest_sign::Signer; 1] = [&key];
            w.take(
                &[vmattest_store::ComponentInput {
                    name: "mem".into(),
                    kind: ComponentKind::Memory,
                    path: mp2,
                    dirty: None,
                }],
                &vmattest_store::TakeOptions {
                    signers: &signers,
                    time: vmattest_core::record::UnixTime {
                        secs: 1_900_000_000,
                        nanos: 0,
                    },
                    secret: None,
                    anchor: false,
                    rotate_to: &[],
                    revokers: &[],
                },
            )
            .map(|_| ())
        });
        // Committed files are refused; a derived cache file may instead be rebuilt, which
        // replaces the FIFO (never reads it).
        let derived = target.starts_with(fx.store.join("head"));
        assert!(
            verify.is_err() || (derived && std::fs::metadata(&target).unwrap().is_file()),
            "{}: a FIFO was accepted",
            target.display()
        );
        let _ = std::fs::remove_file(&target);
        std::fs::write(&target, saved).unwrap();
    }
}

#[test]
fn regression_fsck_with_a_huge_head_seq_is_bounded() {
    let (fx, _) = chain(false, 2);
    let head: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.store.join("HEAD")).unwrap()).unwrap();
    let forged = serde_json::json!({"seq": u64::MAX, "link": head["link"]});
    std::fs::write(fx.store.join("HEAD"), forged.to_string()).unwrap();
    let t = Instant::now();
    let rep = within(20, move || Store::open(&fx.store).unwrap().fsck().unwrap());
    assert!(!rep.is_clean());
    assert!(rep.errors.len() < 40, "{} errors", rep.errors.len());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn regression_missing_head_is_damage_not_an_empty_store() {
    let (mut fx, mp) = chain(false, 3);
    std::fs::remove_file(fx.store.join("HEAD")).unwrap();
    let links_before = std::fs::read_dir(fx.store.join("links")).unwrap().count();
    let err = take(&mut fx, &mp).unwrap_err();
    assert!(err.to_string().contains("HEAD"), "{err}");
    let s = Store::open_writer(&fx.store).unwrap();
    let rep = s.repair().unwrap();
    assert!(!rep.is_clean());
    assert!(!rep.repaired);
    assert_eq!(
        std::fs::read_dir(fx.store.join("links")).unwrap().count(),
        links_before
    );
}

fn edit_meta(store: &Path, f: impl FnOnce(&mut StoreMeta)) {
    let p = store.join("store.json");
    let mut meta: StoreMeta = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut meta);
    std::fs::write(&p, serde_json::to_vec(&meta).unwrap()).unwrap();
}

#[test]
fn regression_store_json_edits_are_caught_against_the_signed_chain() {
    for (what, encrypted) in [("vm_id", false), ("encrypted", false), ("encrypted", true)] {
        let (mut fx, mp) = chain(encrypted, 2);
        edit_meta(&fx.store, |m| match what {
            "vm_id" => m.vm_id = "db7".into(),
            _ => m.encrypted = !m.encrypted,
        });
        let rep = Store::open(&fx.store).unwrap().fsck().unwrap();
        assert!(!rep.is_clean(), "{what}: fsck passed");
        if !encrypted && what == "encrypted" {
            fx.secret = Some(vmattest_store::StoreSecret::generate(&fx.path("s2")).unwrap());
        } else if encrypted {
            fx.secret = None;
        }
        let links = std::fs::read_dir(fx.store.join("links")).unwrap().count();
        assert!(take(&mut fx, &mp).is_err(), "{what}: take appended a link");
        assert_eq!(
            std::fs::read_dir(fx.store.join("links")).unwrap().count(),
            links
        );
    }
}

#[test]
fn regression_store_files_holding_guest_bytes_are_private() {
    let (fx, _) = chain(false, 2);
    assert_eq!(mode(&fx.store), 0o700);
    for d in ["links", "objects", "head", "tmp"] {
        assert_eq!(mode(&fx.store.join(d)), 0o700, "{d}");
    }
    for f in ["head/0.img", "head/0.digests", "HEAD", "store.json"] {
        assert_eq!(mode(&fx.store.join(f)), 0o600, "{f}");
    }
    // An older store made with a loose umask is tightened by the next writer.
    std::fs::set_permissions(&fx.store, std::fs::Permissions::from_mode(0o755)).unwrap();
    drop(Store::open_writer(&fx.store).unwrap());
    assert_eq!(mode(&fx.store), 0o700);
    // A restore writes a private directory of private files.
    let out = fx.path("restored");
    let keys = fx.public();
    Store::open(&fx.store)
        .unwrap()
        .restore(&fx.opts(&keys, None), &out)
        .unwrap();
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("mem")), 0o600);
}

#[test]
fn regression_encrypted_verify_writes_no_plaintext_to_disk() {
    let (fx, _) = chain(true, 3);
    // With tmp/ replaced by a file, any scratch file on disk would fail the verify.
    std::fs::remove_dir_all(fx.store.join("tmp")).unwrap();
    std::fs::write(fx.store.join("tmp"), b"").unwrap();
    let keys = fx.public();
    Store::open(&fx.store)
        .unwrap()
        .verify(&fx.opts(&keys, None))
        .unwrap();
}
