//! Retention: a prune folds old seqs under a signed rebase; every kept seq restores to the same
//! bytes, verification accepts the new chain, takes and bundles go on from it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::PathBuf;

use common::*;
use vmattest_core::chain::{ComponentKind, SeqNo};
use vmattest_core::record::UnixTime;
use vmattest_core::sig::SigAlg;
use vmattest_sign::{SecretKey, Signer};
use vmattest_store::{PruneOptions, PruneSummary, Store, StoreError};

/// Takes `rounds` seqs of a guest-like memory image, a disk and a one-page device state;
/// returns the bytes each seq captured.
fn chain(fx: &mut Fixture, rounds: u64, seed: u64) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let (mem_path, disk_path, dev_path) = paths(fx);
    let mut mem = vm_like(300 * PAGE + 17, seed);
    let mut disk = vm_like(64 * PAGE, seed + 1);
    let mut dev = b"device state v1".to_vec();
    let mut history = Vec::new();
    for round in 0..rounds {
        std::fs::write(&mem_path, &mem).unwrap();
        std::fs::write(&disk_path, &disk).unwrap();
        std::fs::write(&dev_path, &dev).unwrap();
        take(fx);
        history.push((mem.clone(), disk.clone(), dev.clone()));
        mutate(&mut mem, 9, round * 31 + seed);
        mutate(&mut disk, 2, round * 17 + seed);
        dev[0] = dev[0].wrapping_add(1);
    }
    history
}

fn paths(fx: &Fixture) -> (PathBuf, PathBuf, PathBuf) {
    (fx.path("mem.img"), fx.path("disk.img"), fx.path("dev.bin"))
}

fn take(fx: &mut Fixture) {
    let (m, d, v) = paths(fx);
    fx.take(&[
        ("mem", ComponentKind::Memory, &m),
        ("disk", ComponentKind::Disk, &d),
        ("dev", ComponentKind::DeviceState, &v),
    ]);
}

fn prune(fx: &Fixture, keep: Option<u64>, since: Option<u64>) -> Result<PruneSummary, StoreError> {
    let store = Store::open_writer(&fx.store)?;
    let keys = fx.public();
    let signers: [&dyn Signer; 1] = [&fx.key];
    store.prune(&PruneOptions {
        keep,
        keep_since: since.map(|secs| UnixTime { secs, nanos: 0 }),
        keys: &keys,
        secret: fx.secret.as_ref(),
        signers: &signers,
        time: UnixTime {
            secs: fx.time + 1,
            nanos: 0,
        },
    })
}

type History = [(Vec<u8>, Vec<u8>, Vec<u8>)];

#[track_caller]
fn assert_restores(fx: &Fixture, history: &History, seqs: std::ops::RangeInclusive<u64>) {
    assert_restores_from(fx, &fx.store, history, seqs);
}

/// Restores each seq of the store at `root` (signed by `fx`'s key) and compares the bytes.
#[track_caller]
fn assert_restores_from(
    fx: &Fixture,
    root: &std::path::Path,
    history: &History,
    seqs: std::ops::RangeInclusive<u64>,
) {
    let store = Store::open(root).unwrap();
    let keys = fx.public();
    for seq in seqs {
        let out = fx.path(&format!("out-{seq}-{}", rand_suffix()));
        let v = store
            .restore(&fx.opts(&keys, Some(seq)), &out)
            .unwrap_or_else(|e| panic!("seq {seq}: {e}"));
        assert_eq!(v.seq, SeqNo(seq));
        let (m, d, dev) = &history[seq as usize];
        assert_eq!(&std::fs::read(out.join("mem")).unwrap(), m, "seq {seq} mem");
        assert_eq!(
            &std::fs::read(out.join("disk")).unwrap(),
            d,
            "seq {seq} disk"
        );
        assert_eq!(
            &std::fs::read(out.join("dev")).unwrap(),
            dev,
            "seq {seq} dev"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn store_bytes(fx: &Fixture) -> u64 {
    files(&fx.store)
        .iter()
        .filter(|(p, _)| p.starts_with("objects") || p.starts_with("links"))
        .map(|(_, b)| b.len() as u64)
        .sum()
}

#[test]
fn kept_seqs_restore_unchanged_after_prunes() {
    for (alg, encrypted) in [("blake3", false), ("sha256", true)] {
        let mut fx = Fixture::new(alg, encrypted);
        let mut history = chain(&mut fx, 12, 5);
        let before = store_bytes(&fx);

        let s = prune(&fx, Some(5), None).unwrap();
        assert_eq!((s.previous_base, s.base, s.folded, s.head), (0, 7, 7, 11));
        assert!(s.removed_files > 0 && s.removed_bytes > 0, "{s:?}");
        assert!(store_bytes(&fx) < before, "{alg}: nothing was freed");
        assert_restores(&fx, &history, 7..=11);

        let store = Store::open(&fx.store).unwrap();
        let keys = fx.public();
        let err = store
            .restore(&fx.opts(&keys, Some(6)), &fx.path("gone"))
            .unwrap_err();
        assert!(err.to_string().contains("seq 6 was pruned"), "{err}");
        assert_eq!(store.log().unwrap().len(), 5);
        let rep = store.fsck().unwrap();
        assert!(rep.is_clean(), "{:?}", rep.errors);
        assert!(rep.leftovers.is_empty(), "{:?}", rep.leftovers);
        assert_eq!(rep.links, 5);

        // Nothing older to fold: a no-op.
        let again = prune(&fx, Some(5), None).unwrap();
        assert_eq!((again.base, again.folded), (7, 0));

        // Takes go on from the pruned chain; a second prune folds the first rebase too.
        let (mem_path, _, _) = paths(&fx);
        let mut mem = std::fs::read(&mem_path).unwrap();
        for round in 0..3u64 {
            mutate(&mut mem, 4, 900 + round);
            std::fs::write(&mem_path, &mem).unwrap();
            take(&mut fx);
            let (_, d, v) = history.last().unwrap().clone();
            history.push((mem.clone(), d, v));
        }
        let cutoff = fx.time - 5; // seq 13's time
        let s = prune(&fx, None, Some(cutoff)).unwrap();
        assert_eq!((s.previous_base, s.base, s.head), (7, 13, 14));
        assert_restores(&fx, &history, 13..=14);
        // Keep 1: only the head remains, as the rebase itself; a take still follows it.
        let s = prune(&fx, Some(1), None).unwrap();
        assert_eq!((s.base, s.head), (14, 14));
        assert_restores(&fx, &history, 14..=14);
        mutate(&mut mem, 4, 999);
        std::fs::write(&mem_path, &mem).unwrap();
        take(&mut fx);
        let (_, d, v) = history.last().unwrap().clone();
        history.push((mem.clone(), d, v));
        assert_restores(&fx, &history, 14..=15);
        let rep = Store::open(&fx.store).unwrap().fsck().unwrap();
        assert!(rep.is_clean() && rep.leftovers.is_empty(), "{rep}");
    }
}

#[test]
fn a_pruned_chain_travels_in_a_bundle_that_opens_with_its_rebase() {
    let mut fx = Fixture::new("blake3", false);
    let history = chain(&mut fx, 6, 9);
    prune(&fx, Some(3), None).unwrap();
    let store = Store::open(&fx.store).unwrap();
    let bundle = fx.path("pruned.bundle");
    let err = store.export(SeqNo(1), None, &bundle).unwrap_err();
    assert!(err.to_string().contains("the store holds 3..=5"), "{err}");
    store.export(SeqNo(3), None, &bundle).unwrap();
    let keys = fx.public();
    let copy = fx.path("copy");
    let got = Store::import(&copy, &bundle, &fx.opts(&keys, None)).unwrap();
    assert_eq!(got.verified.seq, SeqNo(5));
    assert_restores_from(&fx, &copy, &history, 3..=5);
    // A later bundle continues the copy; a rebase bundle into a store with links is refused.
    store
        .export(SeqNo(3), None, &fx.path("again.bundle"))
        .unwrap();
    let err = Store::import(&copy, &fx.path("again.bundle"), &fx.opts(&keys, None)).unwrap_err();
    assert!(
        err.to_string().contains("only into an empty store"),
        "{err}"
    );
    drop(store);
    // The source goes on (seqs 6 and 7); their bundle continues the pruned copy.
    let mut history = history;
    history.extend(chain(&mut fx, 2, 21));
    let store = Store::open(&fx.store).unwrap();
    store
        .export(SeqNo(6), None, &fx.path("later.bundle"))
        .unwrap();
    let got = Store::import(&copy, &fx.path("later.bundle"), &fx.opts(&keys, None)).unwrap();
    assert_eq!((got.new_links, got.verified.seq), (2, SeqNo(7)));
    assert_restores_from(&fx, &copy, &history, 3..=7);
}

#[test]
fn a_rebase_must_be_signed_by_the_pinned_keys() {
    let mut fx = Fixture::new("blake3", false);
    chain(&mut fx, 4, 3);
    // Signed by a key the verifier does not pin: the prune itself refuses to commit it.
    let store = Store::open_writer(&fx.store).unwrap();
    let other = SecretKey::generate(SigAlg::Ed25519).unwrap();
    let signers: [&dyn Signer; 1] = [&other];
    let keys = fx.public();
    let err = store
        .prune(&PruneOptions {
            keep: Some(2),
            keep_since: None,
            keys: &keys,
            secret: None,
            signers: &signers,
            time: UnixTime {
                secs: fx.time,
                nanos: 0,
            },
        })
        .unwrap_err();
    assert!(err.to_string().contains("seq 2"), "{err}");
    drop(store);
    // Nothing committed: the whole chain still verifies from seq 0.
    let store = Store::open(&fx.store).unwrap();
    assert_eq!(store.head().unwrap().unwrap().base, SeqNo(0));
    assert_eq!(store.verify(&fx.opts(&keys, None)).unwrap().seq, SeqNo(3));
    assert_eq!(
        store.verify(&fx.opts(&keys, Some(0))).unwrap().seq,
        SeqNo(0)
    );
}
