//! Bundles: export/import round trips, and every damaged, foreign, stale or forked bundle is
//! refused without changing the target store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vmattest_core::chain::{ComponentKind, SeqNo};
use vmattest_core::class::{Classify as _, ErrorClass};
use vmattest_core::record::UnixTime;
use vmattest_core::sig::SigAlg;
use vmattest_sign::{SecretKey, Signer};
use vmattest_store::{
    ComponentInput, PinnedKeys, ReplayOptions, Store, StoreError, StoreSecret, TakeOptions,
};

/// A chain of 4 links of a 40-page memory image and a 9-byte device blob.
fn chain(encrypted: bool) -> Fixture {
    let mut fx = Fixture::new("blake3", encrypted);
    let (mp, vp) = (fx.path("mem.img"), fx.path("dev.bin"));
    let mut mem = vm_like(40 * PAGE, 1);
    for round in 0..4u64 {
        std::fs::write(&mp, &mem).unwrap();
        std::fs::write(&vp, format!("dev {round:05}")).unwrap();
        fx.take(&[
            ("mem", ComponentKind::Memory, &mp),
            ("dev", ComponentKind::DeviceState, &vp),
        ]);
        mutate(&mut mem, 6, round + 1);
    }
    fx
}

fn export(fx: &Fixture, name: &str, first: u64, last: Option<u64>) -> PathBuf {
    let out = fx.path(name);
    Store::open(&fx.store)
        .unwrap()
        .export(SeqNo(first), last.map(SeqNo), &out)
        .unwrap();
    out
}

fn import(fx: &Fixture, root: &Path, bundle: &Path) -> Result<u64, StoreError> {
    let keys = fx.public();
    Store::import(root, bundle, &fx.opts(&keys, None)).map(|s| s.verified.seq.0)
}

#[test]
fn export_import_round_trips_whole_and_incremental() {
    let fx = chain(false);
    let keys = fx.public();
    let all = export(&fx, "all", 0, None);
    let copy = fx.path("copy");
    assert_eq!(import(&fx, &copy, &all).unwrap(), 3);
    let a = Store::open(&fx.store)
        .unwrap()
        .verify(&fx.opts(&keys, None))
        .unwrap();
    let b = Store::open(&copy)
        .unwrap()
        .verify(&fx.opts(&keys, None))
        .unwrap();
    assert_eq!((a.link, a.state_root), (b.link, b.state_root));

    let inc = fx.path("inc");
    assert_eq!(
        import(&fx, &inc, &export(&fx, "b01", 0, Some(1))).unwrap(),
        1
    );
    let e = import(&fx, &inc, &export(&fx, "b33", 3, None)).unwrap_err();
    assert!(e.to_string().contains("gap"), "{e}");
    assert_eq!(import(&fx, &inc, &export(&fx, "b23", 2, None)).unwrap(), 3);
    // Overlapping with what the store has is fine as long as it agrees.
    let fresh = fx.path("fresh");
    import(&fx, &fresh, &export(&fx, "b02", 0, Some(2))).unwrap();
    assert_eq!(
        import(&fx, &fresh, &export(&fx, "b13", 1, None)).unwrap(),
        3
    );
    for root in [&copy, &inc, &fresh] {
        let store = Store::open(root).unwrap();
        assert_eq!(store.verify(&fx.opts(&keys, None)).unwrap().link, a.link);
        let rep = store.fsck().unwrap();
        assert!(rep.is_clean() && rep.leftovers.is_empty(), "{rep:?}");
    }
    // A store that starts from a later seq cannot be created.
    let e = import(&fx, &fx.path("late"), &fx.path("b23")).unwrap_err();
    assert!(e.to_string().contains("seq 0"), "{e}");
    assert!(!fx.path("late").exists());
}

#[test]
fn damaged_foreign_stale_and_forked_bundles_change_nothing() {
    let fx = chain(false);
    let all = std::fs::read(export(&fx, "all", 0, None)).unwrap();
    let b0 = export(&fx, "b0", 0, Some(0));
    let b01 = export(&fx, "b01", 0, Some(1));
    let target = fx.path("target");
    import(&fx, &target, &b01).unwrap();

    // A fork: same VM, same baseline, another history.
    let fork = fx.path("fork");
    import(&fx, &fork, &b0).unwrap();
    let other = fx.path("other.img");
    std::fs::write(&other, vm_like(40 * PAGE, 77)).unwrap();
    let dev = fx.path("dev.bin");
    let store = Store::open_writer(&fork).unwrap();
    let signers: [&dyn Signer; 1] = [&fx.key];
    let inputs = [
        ComponentInput {
            name: "mem".into(),
            kind: ComponentKind::Memory,
            path: other,
            dirty: None,
        },
        ComponentInput {
            name: "dev".into(),
            kind: ComponentKind::DeviceState,
            path: dev,
            dirty: None,
        },
    ];
    for k in 0..2 {
        let opts = TakeOptions {
            signers: &signers,
            time: UnixTime {
                secs: fx.time + 100 + k,
                nanos: 0,
            },
            secret: None,
            anchor: false,
            rotate_to: &[],
            revokers: &[],
        };
        store.take(&inputs, &opts).unwrap();
    }
    drop(store);
    let forked_path = fx.path("forked");
    Store::open(&fork)
        .unwrap()
        .export(SeqNo(0), None, &forked_path)
        .unwrap();
    let forked = std::fs::read(forked_path).unwrap();
    let mp = fx.path("mem.img");

    let n = all.len();
    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    let step = (n / 97).max(1);
    for at in (0..64).chain((64..n).step_by(step)).chain([n - 33, n - 1]) {
        let mut b = all.clone();
        b[at] ^= 0x04;
        cases.push((format!("byte {at} flipped"), b, ""));
    }
    for len in [0, 8, 16, 40, n / 4, n / 2, n - 33, n - 1] {
        cases.push((format!("cut at {len}"), all[..len].to_vec(), ""));
    }
    let mut longer = all.clone();
    longer.push(0);
    cases.push(("a byte appended".into(), longer, "after the trailer"));
    cases.push(("fork".into(), forked, "fork"));

    let before = files(&target);
    let case = fx.path("case");
    for (what, bytes, needle) in &cases {
        std::fs::write(&case, bytes).unwrap();
        match import(&fx, &target, &case) {
            Ok(seq) => panic!("{what}: imported up to seq {seq}"),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains(needle), "{what}: {needle:?} not in {text}");
                assert!(!text.contains('\n'), "{what}: {text}");
            }
        }
        assert!(before == files(&target), "{what}: the target changed");
    }
    // regression_reimport_is_a_noop: a bundle whose links are all here already (an older
    // prefix, or the same head) imports as a no-op: nothing is written and the head stays.
    let head = Store::open(&target).unwrap().head().unwrap().unwrap().seq.0;
    for (what, bundle) in [("older prefix", &b0), ("same links again", &b01)] {
        let seq = import(&fx, &target, bundle).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(seq, head, "{what}");
        assert!(before == files(&target), "{what}: the target changed");
    }
    // Another VM.
    let mut alien = Fixture::new("blake3", false);
    let meta = std::fs::read_to_string(alien.store.join("store.json")).unwrap();
    std::fs::write(
        alien.store.join("store.json"),
        meta.replace("vm-test", "vm-alien"),
    )
    .unwrap();
    alien.take(&[("mem", ComponentKind::Memory, &mp)]);
    let out = alien.path("b");
    Store::open(&alien.store)
        .unwrap()
        .export(SeqNo(0), None, &out)
        .unwrap();
    let e = import(&fx, &target, &out).unwrap_err();
    assert!(e.to_string().contains("vm-alien"), "{e}");
    assert!(before == files(&target), "foreign VM: the target changed");

    // Signed by a key that is not pinned.
    let stranger = SecretKey::generate(SigAlg::Ed25519).unwrap();
    let keys = PinnedKeys::new(vec![stranger.public_key()]).unwrap();
    let e = Store::import(&target, &fx.path("all"), &fx.opts(&keys, None)).unwrap_err();
    assert!(
        e.class() == ErrorClass::Verification && e.to_string().contains("signature"),
        "{e}"
    );
    assert!(before == files(&target), "wrong key: the target changed");

    assert_eq!(import(&fx, &target, &fx.path("all")).unwrap(), 3);
}

#[test]
fn a_refused_bundle_creates_no_store() {
    let fx = chain(false);
    let mut bytes = std::fs::read(export(&fx, "all", 0, None)).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    let bad = fx.path("bad");
    std::fs::write(&bad, &bytes).unwrap();
    let target = fx.path("new-store");
    assert!(import(&fx, &target, &bad).is_err());
    assert!(
        !target.exists(),
        "a refused import left {} behind",
        target.display()
    );
}

#[test]
fn encrypted_bundles_need_the_secret() {
    let fx = chain(true);
    let keys = fx.public();
    let all = export(&fx, "all", 0, None);
    let wrong = StoreSecret::generate(&fx.path("wrong")).unwrap();
    let target = fx.path("target");
    for secret in [None, Some(&wrong)] {
        let opts = ReplayOptions {
            secret,
            ..fx.opts(&keys, None)
        };
        assert!(Store::import(&target, &all, &opts).is_err());
        assert!(
            !target.join("HEAD").exists(),
            "a refused import committed a head"
        );
    }
    let _ = std::fs::remove_dir_all(&target);
    let s = Store::import(&target, &all, &fx.opts(&keys, None)).unwrap();
    assert_eq!(s.verified.seq, SeqNo(3));
    Store::open(&target)
        .unwrap()
        .verify(&fx.opts(&keys, None))
        .unwrap();
}

#[test]
fn a_successful_import_leaves_a_store_that_verifies() {
    // The target holds a damaged copy of an object the bundle also carries. Import verifies
    // with the bundle's good copy; the committed store must not keep the damaged one.
    let fx = chain(false);
    let keys = fx.public();
    let target = fx.path("target");
    import(&fx, &target, &export(&fx, "b01", 0, Some(1))).unwrap();
    let store = Store::open(&target).unwrap();
    let link = store.read_link(SeqNo(1)).unwrap();
    let batch = store.read_manifest(link.value()).unwrap().batches[0].object;
    let hex = batch.to_hex();
    let path = target.join("objects").join(&hex[..2]).join(&hex[2..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(store.verify(&fx.opts(&keys, None)).is_err());

    if import(&fx, &target, &export(&fx, "all", 0, None)).is_ok() {
        let v = Store::open(&target).unwrap().verify(&fx.opts(&keys, None));
        assert!(
            v.is_ok(),
            "import succeeded but the store fails: {}",
            v.unwrap_err()
        );
    }
}
