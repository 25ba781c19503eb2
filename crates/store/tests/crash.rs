//! Writers in one process: the lock, racing takes, refused takes that change nothing, and
//! dirty-page takes. Crashes of real processes are tested through the CLI
//! (crates/cli/tests/snapshot.rs), which can see the binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use common::*;
use vmattest_core::alg::PageIndex;
use vmattest_core::chain::{ComponentKind, SeqNo};
use vmattest_core::record::UnixTime;
use vmattest_sign::{SecretKey, Signer};
use vmattest_store::{ComponentInput, Store, StoreError, TakeOptions, TakeSummary};

fn input(name: &str, kind: ComponentKind, path: &Path, dirty: Option<Vec<u64>>) -> ComponentInput {
    ComponentInput {
        name: name.into(),
        kind,
        path: path.to_path_buf(),
        dirty: dirty.map(|d| d.into_iter().map(PageIndex).collect()),
    }
}

fn take_at(
    root: &Path,
    key: &SecretKey,
    secs: u64,
    inputs: &[ComponentInput],
) -> Result<TakeSummary, StoreError> {
    let store = Store::open_writer(root)?;
    let signers: [&dyn Signer; 1] = [key];
    store.take(
        inputs,
        &TakeOptions {
            signers: &signers,
            time: UnixTime { secs, nanos: 0 },
            secret: None,
            anchor: false,
            rotate_to: &[],
            revokers: &[],
        },
    )
}

fn assert_sound(fx: &Fixture, head: u64) {
    let store = Store::open(&fx.store).unwrap();
    assert_eq!(store.head().unwrap().unwrap().seq, SeqNo(head));
    let keys = fx.public();
    assert_eq!(
        store.verify(&fx.opts(&keys, None)).unwrap().seq,
        SeqNo(head)
    );
    let rep = store.fsck().unwrap();
    assert!(rep.is_clean(), "{:?}", rep.errors);
    assert_eq!(rep.links, head + 1);
}

#[test]
fn second_writer_is_locked_out_until_the_first_is_dropped() {
    let fx = Fixture::new("blake3", false);
    let first = Store::open_writer(&fx.store).unwrap();
    let e = Store::open_writer(&fx.store).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("lock"), "{e}");
    // Readers are not blocked (that a reader cannot take or repair is checked at compile
    // time: see `regression_a_reader_has_no_mutating_method` in hardening.rs).
    Store::open(&fx.store).unwrap().fsck().unwrap();
    let mp = fx.path("mem.img");
    std::fs::write(&mp, vm_like(8 * PAGE, 1)).unwrap();
    let signers: [&dyn Signer; 1] = [&fx.key];
    let opts = TakeOptions {
        signers: &signers,
        time: UnixTime { secs: 1, nanos: 0 },
        secret: None,
        anchor: false,
        rotate_to: &[],
        revokers: &[],
    };
    let inputs = [input("mem", ComponentKind::Memory, &mp, None)];
    drop(first);
    let again = Store::open_writer(&fx.store).unwrap();
    again.take(&inputs, &opts).unwrap();
}

#[test]
fn racing_takes_never_fork_the_chain() {
    let mut fx = Fixture::new("blake3", false);
    let base = fx.path("base.img");
    std::fs::write(&base, vm_like(256 * PAGE, 7)).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &base)]);
    let threads = 6;
    let rounds = 4;
    let images: Vec<PathBuf> = (0..threads)
        .map(|t| {
            let p = fx.path(&format!("mem-{t}.img"));
            let mut data = vm_like(256 * PAGE, 7);
            mutate(&mut data, 40, t as u64 + 100);
            std::fs::write(&p, data).unwrap();
            p
        })
        .collect();
    let barrier = Arc::new(Barrier::new(threads));
    let secs = fx.time + 10;
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|img| {
                let barrier = Arc::clone(&barrier);
                let (root, key) = (&fx.store, &fx.key);
                s.spawn(move || {
                    let (mut ok, mut locked) = (0, 0);
                    for _ in 0..rounds {
                        barrier.wait();
                        let inputs = [input("mem", ComponentKind::Memory, img, None)];
                        match take_at(root, key, secs, &inputs) {
                            Ok(_) => ok += 1,
                            Err(StoreError::Locked { .. }) => locked += 1,
                            Err(e) => panic!("racing take: {e}"),
                        }
                    }
                    (ok, locked)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: usize = results.iter().map(|r| r.0).sum();
    let locked: usize = results.iter().map(|r| r.1).sum();
    assert_eq!(ok + locked, threads * rounds);
    assert!(ok >= rounds, "each round has a winner: {results:?}");
    assert_sound(&fx, ok as u64);
    // Exactly one link per seq, each naming its predecessor.
    let store = Store::open(&fx.store).unwrap();
    let links = store.log().unwrap();
    assert_eq!(links.len(), ok + 1);
    for w in links.windows(2) {
        assert_eq!(w[1].value().prev, vmattest_core::chain::link_digest(&w[0]));
    }
    let files = std::fs::read_dir(fx.store.join("links")).unwrap().count();
    assert_eq!(files, ok + 1);
}

#[test]
fn refused_takes_leave_the_store_unchanged() {
    let mut fx = Fixture::new("blake3", false);
    let (mp, vp) = (fx.path("mem.img"), fx.path("dev.bin"));
    std::fs::write(&mp, vm_like(64 * PAGE, 1)).unwrap();
    std::fs::write(&vp, b"dev").unwrap();
    let comps = |m: &Path| {
        [
            input("mem", ComponentKind::Memory, m, None),
            input("dev", ComponentKind::DeviceState, &vp, None),
        ]
    };
    fx.take(&[
        ("mem", ComponentKind::Memory, &mp),
        ("dev", ComponentKind::DeviceState, &vp),
    ]);
    let t0 = fx.time;
    let before = files(&fx.store);
    let head_before = std::fs::read(fx.store.join("HEAD")).unwrap();

    // A component of another size.
    let bigger = fx.path("bigger.img");
    std::fs::write(&bigger, vm_like(65 * PAGE, 1)).unwrap();
    let e = take_at(&fx.store, &fx.key, t0 + 5, &comps(&bigger)).unwrap_err();
    assert!(matches!(e, StoreError::Input(_)), "{e}");
    assert!(e.to_string().contains("component mem"), "{e}");
    assert!(e.to_string().contains("size"), "{e}");
    // One byte shorter is also another size.
    let shorter = fx.path("shorter.img");
    std::fs::write(&shorter, &vm_like(64 * PAGE, 1)[..64 * PAGE - 1]).unwrap();
    take_at(&fx.store, &fx.key, t0 + 5, &comps(&shorter)).unwrap_err();
    // Another component set.
    let e = take_at(&fx.store, &fx.key, t0 + 5, &comps(&mp)[..1]).unwrap_err();
    assert!(e.to_string().contains("components"), "{e}");

    // Time going backwards.
    let mut changed = vm_like(64 * PAGE, 1);
    mutate(&mut changed, 10, 3);
    let cp = fx.path("changed.img");
    std::fs::write(&cp, &changed).unwrap();
    let e = take_at(&fx.store, &fx.key, t0 - 1, &comps(&cp)).unwrap_err();
    assert!(e.to_string().contains("backwards"), "{e}");

    // A dirty page past the end.
    let mut bad = comps(&cp);
    bad[0].dirty = Some(vec![PageIndex(64)]);
    take_at(&fx.store, &fx.key, t0 + 5, &bad).unwrap_err();

    assert_eq!(std::fs::read(fx.store.join("HEAD")).unwrap(), head_before);
    let after = files(&fx.store);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert!(before == after, "file contents changed");
    assert_sound(&fx, 0);

    // The same time as the head is allowed, and the chain goes on.
    let s = take_at(&fx.store, &fx.key, t0, &comps(&cp)).unwrap();
    assert_eq!(s.seq, SeqNo(1));
    assert_sound(&fx, 1);
}

#[test]
fn dirty_page_takes_equal_full_takes() {
    // Two stores fed the same images at the same times: one compares every page, the other
    // gets the list of pages that changed. Same state roots, same restored bytes.
    let mut full = Fixture::new("sha256", false);
    let mut dirty = Fixture::new("sha256", false);
    let (mp, sp) = (full.path("mem.img"), full.path("small.bin"));
    let mut mem = vm_like(500 * PAGE + 100, 9);
    let mut small = b"small device state".to_vec();
    let mut rng = 0x1234_5678_u64;
    let mut history = Vec::new();
    for round in 0..6u64 {
        let mut pages: Vec<u64> = Vec::new();
        if round > 0 {
            for i in 0..(round * 11) {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                let p = (rng >> 33) % 501;
                let start = p as usize * PAGE;
                let end = (start + PAGE).min(mem.len());
                match i % 3 {
                    0 => mem[start..end].fill(0),
                    1 => mem[start] ^= 0xa5,
                    _ => mem[start..end].fill(round as u8),
                }
                pages.push(p);
            }
            // Listing an unchanged page, and a page twice, is harmless.
            pages.push(0);
            pages.push(pages[0]);
            small[0] ^= 1;
        }
        std::fs::write(&mp, &mem).unwrap();
        std::fs::write(&sp, &small).unwrap();
        full.time += 5;
        dirty.time += 5;
        let a = take_at(
            &full.store,
            &full.key,
            full.time,
            &[
                input("mem", ComponentKind::Memory, &mp, None),
                input("small", ComponentKind::DeviceState, &sp, None),
            ],
        )
        .unwrap();
        let b = take_at(
            &dirty.store,
            &dirty.key,
            dirty.time,
            &[
                input("mem", ComponentKind::Memory, &mp, Some(pages)),
                input("small", ComponentKind::DeviceState, &sp, Some(vec![0])),
            ],
        )
        .unwrap();
        assert_eq!(a.state_root, b.state_root, "round {round}");
        assert_eq!(a.components, b.components, "round {round}");
        assert_eq!(a.changed_pages, b.changed_pages, "round {round}");
        history.push((mem.clone(), small.clone()));
    }
    assert_sound(&dirty, 5);
    let keys = dirty.public();
    let store = Store::open(&dirty.store).unwrap();
    for (seq, (m, s)) in history.iter().enumerate() {
        let out = dirty.path(&format!("out-{seq}"));
        store
            .restore(&dirty.opts(&keys, Some(seq as u64)), &out)
            .unwrap();
        assert_eq!(&std::fs::read(out.join("mem")).unwrap(), m, "seq {seq}");
        assert_eq!(&std::fs::read(out.join("small")).unwrap(), s, "seq {seq}");
    }
}

#[test]
fn a_stale_head_cache_is_rebuilt_not_trusted() {
    // Damage the derived cache (bytes and stamp): the next take must rebuild it from the
    // chain, so the new link still restores to the real images.
    let mut fx = Fixture::new("blake3", false);
    let mp = fx.path("mem.img");
    let mut mem = vm_like(128 * PAGE, 4);
    std::fs::write(&mp, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mp)]);
    let cache = fx.store.join("head").join("0.img");
    let mut bytes = std::fs::read(&cache).unwrap();
    bytes[5 * PAGE] ^= 0xff;
    std::fs::write(&cache, &bytes).unwrap();
    std::fs::remove_file(fx.store.join("head").join("stamp.json")).unwrap();
    mutate(&mut mem, 12, 8);
    std::fs::write(&mp, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mp)]);
    assert_sound(&fx, 1);
    let keys = fx.public();
    let out = fx.path("out");
    Store::open(&fx.store)
        .unwrap()
        .restore(&fx.opts(&keys, None), &out)
        .unwrap();
    assert_eq!(std::fs::read(out.join("mem")).unwrap(), mem);
}
