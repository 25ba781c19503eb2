//! Tamper matrix: every kind of stored file, damaged one way at a time, is caught by `verify`,
//! and the error's variant names what broke (the seq, and the component and page where the
//! store reports them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::*;
use vmattest_core::chain::{ComponentKind, KeyError, Link, ObjectId, SeqNo};
use vmattest_core::class::{Classify as _, ErrorClass};
use vmattest_core::sig::SigAlg;
use vmattest_core::wire::{Kind, Writer};
use vmattest_sign::{SecretKey, Signer as _};
use vmattest_store::{Broken, PinnedKeys, ReplayOptions, Store, StoreError, StoreSecret};

/// Baseline + 3 deltas of mem (300 pages + 17 bytes), disk (64 pages) and dev (15 bytes).
fn chain(encrypted: bool) -> Fixture {
    let mut fx = Fixture::new("blake3", encrypted);
    let (mp, dp, vp) = (fx.path("mem.img"), fx.path("disk.img"), fx.path("dev.bin"));
    let mut mem = vm_like(300 * PAGE + 17, 11);
    let mut disk = vm_like(64 * PAGE, 12);
    let mut dev = b"device state v1".to_vec();
    for round in 0..4u64 {
        std::fs::write(&mp, &mem).unwrap();
        std::fs::write(&dp, &disk).unwrap();
        std::fs::write(&vp, &dev).unwrap();
        fx.take(&[
            ("mem", ComponentKind::Memory, &mp),
            ("disk", ComponentKind::Disk, &dp),
            ("dev", ComponentKind::DeviceState, &vp),
        ]);
        mutate(&mut mem, 9, round * 7 + 5);
        mutate(&mut disk, 3, round * 13 + 2);
        dev[3] = dev[3].wrapping_add(1 + round as u8 * 2);
    }
    fx
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn manifest_id(root: &Path, seq: u64) -> ObjectId {
    Store::open(root)
        .unwrap()
        .read_link(SeqNo(seq))
        .unwrap()
        .value()
        .manifest
}

/// A batch of `seq` that no other seq references.
fn own_batch(root: &Path, seq: u64) -> ObjectId {
    let store = Store::open(root).unwrap();
    let head = store.head().unwrap().unwrap().seq.0;
    let batches = |s: u64| -> Vec<ObjectId> {
        let link = store.read_link(SeqNo(s)).unwrap();
        let m = store.read_manifest(link.value()).unwrap();
        m.batches.iter().map(|b| b.object).collect()
    };
    let others: HashSet<ObjectId> = (0..=head).filter(|&s| s != seq).flat_map(batches).collect();
    batches(seq)
        .into_iter()
        .find(|b| !others.contains(b))
        .expect("a batch only this seq uses")
}

fn flip(path: &Path, at: impl Fn(&[u8]) -> usize) {
    let mut b = std::fs::read(path).unwrap();
    let i = at(&b);
    b[i] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

fn truncate(path: &Path) {
    let b = std::fs::read(path).unwrap();
    std::fs::write(path, &b[..b.len() / 2]).unwrap();
}

/// Position of the first byte of `needle` in `hay`, plus `skip`.
fn find(hay: &[u8], needle: &str, skip: usize) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle:?} not found"))
        + skip
}

fn verify_copy(fx: &Fixture, root: &Path, upto: Option<u64>) -> Result<SeqNo, StoreError> {
    let keys = fx.public();
    let store = Store::open(root)?;
    store.verify(&fx.opts(&keys, upto)).map(|v| v.seq)
}

type Tamper = Box<dyn Fn(&Path)>;
/// Whether an error is the one a tamper must cause.
type Expect = fn(&StoreError) -> bool;

/// A failed check of link `n` (its signature, manifest, batches or HEAD's digest of it) for
/// a reason `why` accepts.
fn fails_seq(e: &StoreError, n: u64, why: Why) -> bool {
    matches!(e, StoreError::Verification { seq, broken } if *seq == SeqNo(n) && why(broken))
}

/// Which kinds of break a tamper may cause.
type Why = fn(&Broken) -> bool;

fn signature(b: &Broken) -> bool {
    matches!(b, Broken::Signature(_))
}

/// A page batch that is missing, altered or short.
fn batch(b: &Broken) -> bool {
    matches!(
        b,
        Broken::Batch { .. } | Broken::BatchObject { .. } | Broken::ShortBatch { .. }
    )
}

/// A store file that does not parse, named by its file name.
fn corrupt(e: &StoreError, name: &str) -> bool {
    matches!(e, StoreError::Corrupt { file, .. } if file.ends_with(name))
}

#[test]
fn every_tamper_is_caught_and_named() {
    let fx = chain(false);
    let m2 = manifest_id(&fx.store, 2);
    let (b0, b1, b2, b3) = (
        own_batch(&fx.store, 0),
        own_batch(&fx.store, 1),
        own_batch(&fx.store, 2),
        own_batch(&fx.store, 3),
    );
    // Byte 16 + 4 + 16 + 1 + 8 + 32 + 32 + 5 of a link file lies in its state root.
    let state_root_byte = 16 + 4 + 16 + 1 + 8 + 32 + 32 + 5;
    let cases: Vec<(&str, Tamper, Expect, bool)> = vec![
        (
            "link 2 body",
            Box::new(move |r| flip(&link_path(r, 2), |_| state_root_byte)),
            |e| fails_seq(e, 2, signature),
            true,
        ),
        (
            "link 2 signature",
            Box::new(|r| flip(&link_path(r, 2), |b| b.len() - 3)),
            |e| fails_seq(e, 2, signature),
            true,
        ),
        (
            "head link signature",
            Box::new(|r| flip(&link_path(r, 3), |b| b.len() - 3)),
            |e| fails_seq(e, 3, signature),
            true,
        ),
        (
            "HEAD digest",
            Box::new(|r| flip(&r.join("HEAD"), |b| find(b, "\"link\":\"", 12))),
            // The flipped bit may leave a hex digit or not, depending on the random key.
            |e| fails_seq(e, 3, |b| matches!(b, Broken::HeadDigest)) || corrupt(e, "HEAD"),
            false,
        ),
        (
            "HEAD seq",
            Box::new(|r| flip(&r.join("HEAD"), |b| find(b, "\"seq\":", 6))),
            |e| fails_seq(e, 2, |b| matches!(b, Broken::HeadDigest)),
            false,
        ),
        (
            "manifest 2",
            Box::new(move |r| flip(&object_path(r, &m2), |b| b.len() / 2)),
            |e| fails_seq(e, 2, |b| matches!(b, Broken::ManifestObject(_))),
            true,
        ),
        (
            "batch of seq 2",
            Box::new(move |r| flip(&object_path(r, &b2), |b| b.len() / 2)),
            |e| fails_seq(e, 2, batch),
            true,
        ),
        (
            "batch of the baseline",
            Box::new(move |r| flip(&object_path(r, &b0), |b| b.len() - 1)),
            |e| fails_seq(e, 0, batch),
            true,
        ),
        (
            "batch of seq 1 deleted",
            Box::new(move |r| std::fs::remove_file(object_path(r, &b1)).unwrap()),
            |e| fails_seq(e, 1, batch),
            true,
        ),
        (
            "batch of seq 3 truncated",
            Box::new(move |r| truncate(&object_path(r, &b3))),
            |e| fails_seq(e, 3, batch),
            true,
        ),
        (
            "link 1 deleted",
            Box::new(|r| std::fs::remove_file(link_path(r, 1)).unwrap()),
            |e| matches!(e, StoreError::MissingLink { seq: SeqNo(1) }),
            true,
        ),
        (
            "link 1 truncated",
            Box::new(|r| truncate(&link_path(r, 1))),
            |e| matches!(e, StoreError::BadLink { seq: SeqNo(1), .. }),
            true,
        ),
        (
            "store.json syntax",
            Box::new(|r| flip(&r.join("store.json"), |_| 0)),
            |e| corrupt(e, "store.json"),
            false,
        ),
        (
            "store.json format",
            Box::new(|r| flip(&r.join("store.json"), |b| find(b, "\"format\": ", 10))),
            |e| corrupt(e, "store.json"),
            false,
        ),
        (
            "store.json algorithm",
            Box::new(|r| flip(&r.join("store.json"), |b| find(b, "blake3", 5))),
            |e| corrupt(e, "store.json"),
            false,
        ),
        (
            "store.json VM id",
            Box::new(|r| flip(&r.join("store.json"), |b| find(b, "vm-test", 6))),
            |e| fails_seq(e, 0, |b| matches!(b, Broken::VmId { .. })),
            true,
        ),
        (
            "store.json policy id",
            Box::new(|r| flip(&r.join("store.json"), |b| find(b, "default", 6))),
            |e| fails_seq(e, 0, |b| matches!(b, Broken::Policy { .. })),
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, tamper, expect, verification)) in cases.iter().enumerate() {
        let root = fx.path(&format!("copy-{i}"));
        copy_dir(&fx.store, &root);
        verify_copy(&fx, &root, None).unwrap_or_else(|e| panic!("{what}: clean copy: {e}"));
        tamper(&root);
        match verify_copy(&fx, &root, None) {
            Ok(seq) => failures.push(format!("{what}: verify passed (seq {seq})")),
            Err(e) => {
                let text = e.to_string();
                if !expect(&e) {
                    failures.push(format!("{what}: unexpected error {e:?}"));
                }
                if *verification && e.class() != ErrorClass::Verification {
                    failures.push(format!("{what}: not a verification error: {text}"));
                }
                assert!(!text.contains('\n'), "{what}: multi-line error {text:?}");
            }
        }
        // fsck checks files, not signatures (it has no keys).
        if let Ok(store) = Store::open(&root)
            && !what.starts_with("store.json")
            && !what.ends_with("signature")
        {
            let rep = store.fsck().unwrap();
            if rep.is_clean() {
                failures.push(format!("{what}: fsck is clean"));
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn wrong_key_is_named_and_prefixes_before_damage_still_verify() {
    let fx = chain(false);
    let other = PinnedKeys::new(vec![
        SecretKey::generate(SigAlg::Ed25519).unwrap().public_key(),
    ])
    .unwrap();
    let store = Store::open(&fx.store).unwrap();
    let e = store.verify(&fx.opts(&other, None)).unwrap_err();
    assert!(e.class() == ErrorClass::Verification, "{e}");
    assert!(
        matches!(
            e,
            StoreError::Verification {
                seq: SeqNo(0),
                broken: Broken::Keys(KeyError::Signers { .. })
            }
        ),
        "a signature by an unpinned key fails the first link: {e}"
    );

    let m3 = manifest_id(&fx.store, 3);
    let b3 = own_batch(&fx.store, 3);
    let tampers: Vec<(&str, Tamper, Why)> = vec![
        (
            "link 3",
            Box::new(|r| flip(&link_path(r, 3), |b| b.len() - 3)),
            signature,
        ),
        (
            "manifest 3",
            Box::new(move |r| flip(&object_path(r, &m3), |b| b.len() / 2)),
            |b| matches!(b, Broken::ManifestObject(_)),
        ),
        (
            "batch 3",
            Box::new(move |r| std::fs::remove_file(object_path(r, &b3)).unwrap()),
            batch,
        ),
    ];
    for (i, (what, tamper, why)) in tampers.iter().enumerate() {
        let root = fx.path(&format!("prefix-{i}"));
        copy_dir(&fx.store, &root);
        tamper(&root);
        let e = verify_copy(&fx, &root, None).unwrap_err();
        assert!(fails_seq(&e, 3, *why), "{what}: {e}");
        for upto in 0..=2 {
            assert_eq!(
                verify_copy(&fx, &root, Some(upto))
                    .unwrap_or_else(|e| panic!("{what}: upto {upto}: {e}")),
                SeqNo(upto)
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}

/// Rewrites the head's first batch with one changed byte, re-addressed, and re-signs a link
/// whose manifest names it: content addresses and signatures all check, only the page
/// digests betray the change. Returns the page that changed.
fn forge_head_batch(root: &Path, key: &SecretKey) -> u64 {
    let store = Store::open(root).unwrap();
    let head = store.head().unwrap().unwrap();
    let signed = store.read_link(head.seq).unwrap();
    let mut manifest = store.read_manifest(signed.value()).unwrap();
    let first = manifest.entries.iter().find(|e| e.change.stored()).unwrap();
    assert_eq!(first.component, 0, "the first batch holds mem pages");
    let page = first.page.0;
    let old = store
        .read_object(&manifest.batches[0].object, 1 << 24)
        .unwrap();
    assert_eq!(old[16], 0, "plain batch");
    let raw_len = u64::from_be_bytes(old[17..25].try_into().unwrap());
    let mut raw = zstd::bulk::decompress(&old[25..], raw_len as usize).unwrap();
    raw[0] ^= 0xff;
    let mut w = Writer::new();
    w.u8(0)
        .u64(raw_len)
        .raw(&zstd::bulk::compress(&raw, 3).unwrap());
    manifest.batches[0].object = write_object(root, &w.envelope(Kind::Batch));
    let link = Link {
        manifest: write_object(root, &manifest.encode()),
        ..signed.value().clone()
    };
    resign_head(root, key, link);
    page
}

#[test]
fn consistently_altered_pages_are_caught_by_their_digests() {
    // A delta at the head.
    let fx = chain(false);
    let page = forge_head_batch(&fx.store, &fx.key);
    let e = verify_copy(&fx, &fx.store, None).unwrap_err();
    let text = e.to_string();
    assert!(e.class() == ErrorClass::Verification, "{text}");
    assert!(
        matches!(&e, StoreError::PageMismatch { seq: SeqNo(3), component, page: p, .. }
            if component == "mem" && *p == page),
        "{text}"
    );
    assert_eq!(verify_copy(&fx, &fx.store, Some(2)).unwrap(), SeqNo(2));

    // A baseline-only chain.
    let mut fx = Fixture::new("sha256", false);
    let mp = fx.path("mem.img");
    std::fs::write(&mp, vm_like(40 * PAGE, 3)).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mp)]);
    let page = forge_head_batch(&fx.store, &fx.key);
    let e = verify_copy(&fx, &fx.store, None).unwrap_err();
    assert!(
        matches!(&e, StoreError::PageMismatch { seq: SeqNo(0), component, page: p, .. }
            if component == "mem" && *p == page),
        "{e}"
    );
}

/// Entries of `dir` whose names start with `prefix`.
fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn encrypted_store_needs_the_right_secret_and_failed_restores_leave_nothing() {
    let fx = chain(true);
    let keys = fx.public();
    let store = Store::open(&fx.store).unwrap();
    let out_dir = fx.path("restores");
    std::fs::create_dir(&out_dir).unwrap();

    let good = out_dir.join("good");
    store.restore(&fx.opts(&keys, None), &good).unwrap();
    assert_eq!(std::fs::read(good.join("dev")).unwrap().len(), 15);

    let wrong = StoreSecret::generate(&fx.path("wrong-secret")).unwrap();
    let bad_opts = ReplayOptions {
        secret: Some(&wrong),
        ..fx.opts(&keys, None)
    };
    let out = out_dir.join("wrong-secret");
    let e = store.restore(&bad_opts, &out).unwrap_err();
    // The wrong secret fails the first batch it decrypts.
    assert!(fails_seq(&e, 0, batch), "{e}");
    assert!(!out.exists());
    assert!(store.verify(&bad_opts).is_err());

    let none_opts = ReplayOptions {
        secret: None,
        ..fx.opts(&keys, None)
    };
    let out = out_dir.join("no-secret");
    let e = store.restore(&none_opts, &out).unwrap_err();
    assert!(matches!(e, StoreError::Secret(_)), "{e}");
    assert!(!out.exists());

    // A damaged batch at seq 3: the restore fails late, after writing pages to staging.
    let b3 = own_batch(&fx.store, 3);
    flip(&object_path(&fx.store, &b3), |b| b.len() - 20);
    let out = out_dir.join("damaged");
    let e = store.restore(&fx.opts(&keys, None), &out).unwrap_err();
    assert!(fails_seq(&e, 3, batch), "{e}");
    assert!(!out.exists());
    // ...but an earlier seq still restores.
    let out = out_dir.join("seq2");
    store.restore(&fx.opts(&keys, Some(2)), &out).unwrap();
    assert!(out.join("mem").exists());

    assert_eq!(
        leftovers(&out_dir, ".vmattest-restore"),
        Vec::<String>::new()
    );
    assert!(leftovers(&fx.store.join("tmp"), "").is_empty());
    // Restoring onto an existing directory is refused and does not touch it.
    let e = store.restore(&fx.opts(&keys, None), &good).unwrap_err();
    assert!(matches!(e, StoreError::Input(_)), "{e}");
    assert!(good.join("mem").exists());
}
