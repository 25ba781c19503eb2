//! Chains of snapshots: every seq restores byte-identical, verification names what broke.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use vmattest_core::chain::{ComponentKind, SeqNo};
use vmattest_store::Store;

#[test]
fn every_seq_restores_byte_identical() {
    for (alg, encrypted) in [
        ("blake3", false),
        ("sha256", false),
        ("blake3", true),
        ("sha384", false),
    ] {
        let mut fx = Fixture::new(alg, encrypted);
        let mem_path = fx.path("mem.img");
        let disk_path = fx.path("disk.img");
        let dev_path = fx.path("dev.bin");
        let mut mem = vm_like(300 * PAGE + 17, 1);
        let mut disk = vm_like(64 * PAGE, 2);
        let mut dev = b"device state v1".to_vec();
        let mut history = Vec::new();
        for round in 0..6u64 {
            std::fs::write(&mem_path, &mem).unwrap();
            std::fs::write(&disk_path, &disk).unwrap();
            std::fs::write(&dev_path, &dev).unwrap();
            let s = fx.take(&[
                ("mem", ComponentKind::Memory, &mem_path),
                ("disk", ComponentKind::Disk, &disk_path),
                ("dev", ComponentKind::DeviceState, &dev_path),
            ]);
            assert_eq!(s.seq, SeqNo(round));
            history.push((mem.clone(), disk.clone(), dev.clone()));
            mutate(&mut mem, 7, round * 31 + 1);
            mutate(&mut disk, 2, round * 17 + 3);
            dev[0] = dev[0].wrapping_add(1);
        }
        let store = Store::open(&fx.store).unwrap();
        let keys = fx.public();
        for (seq, (m, d, v)) in history.iter().enumerate() {
            let out = fx.path(&format!("out-{seq}"));
            let verified = store
                .restore(&fx.opts(&keys, Some(seq as u64)), &out)
                .unwrap();
            assert_eq!(verified.seq, SeqNo(seq as u64));
            assert_eq!(
                &std::fs::read(out.join("mem")).unwrap(),
                m,
                "{alg} seq {seq} mem"
            );
            assert_eq!(
                &std::fs::read(out.join("disk")).unwrap(),
                d,
                "{alg} seq {seq} disk"
            );
            assert_eq!(
                &std::fs::read(out.join("dev")).unwrap(),
                v,
                "{alg} seq {seq} dev"
            );
        }
        let report = store.fsck().unwrap();
        assert!(report.is_clean(), "{:?}", report.errors);
        assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    }
}

#[test]
fn encrypted_store_holds_no_plaintext_pages() {
    let mut fx = Fixture::new("blake3", true);
    let mem_path = fx.path("mem.img");
    let mut mem = vm_like(64 * PAGE, 5);
    // A recognisable, incompressible-looking marker in one page.
    let marker: Vec<u8> = (0..PAGE).map(|i| (i * 131 % 251) as u8).collect();
    mem[3 * PAGE..4 * PAGE].copy_from_slice(&marker);
    std::fs::write(&mem_path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mem_path)]);
    mutate(&mut mem, 5, 9);
    std::fs::write(&mem_path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mem_path)]);
    let needle = &marker[..64];
    for (entry, bytes) in files(&fx.store) {
        assert!(
            !bytes.windows(64).any(|w| w == needle),
            "plaintext page found in {}",
            entry.display()
        );
    }
    // Without the secret nothing can be restored.
    let store = Store::open(&fx.store).unwrap();
    let keys = fx.public();
    let mut opts = fx.opts(&keys, None);
    opts.secret = None;
    assert!(
        store
            .verify(&opts)
            .unwrap_err()
            .to_string()
            .contains("secret")
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 12, ..Default::default() })]

    /// Random images of random sizes, random mutation rounds: every seq restores
    /// byte-identical, whatever the tree algorithm.
    #[test]
    fn random_chains_restore_every_seq(
        pages in 1usize..200,
        tail in 0usize..PAGE,
        seed in proptest::prelude::any::<u64>(),
        rounds in 1usize..5,
        changes in proptest::collection::vec(0usize..40, 4),
        alg_i in 0usize..3,
    ) {
        let alg = ["blake3", "sha256", "sha384"][alg_i];
        let mut fx = Fixture::new(alg, seed % 4 == 0);
        let path = fx.path("mem.img");
        let mut mem = vm_like((pages - 1) * PAGE + tail.max(1), seed);
        let mut history = Vec::new();
        for r in 0..=rounds {
            std::fs::write(&path, &mem).unwrap();
            fx.take(&[("mem", ComponentKind::Memory, &path)]);
            history.push(mem.clone());
            mutate(&mut mem, changes[r % changes.len()], seed ^ r as u64);
        }
        let store = Store::open(&fx.store).unwrap();
        let keys = fx.public();
        for (seq, want) in history.iter().enumerate() {
            let out = fx.path(&format!("out-{seq}"));
            store.restore(&fx.opts(&keys, Some(seq as u64)), &out).unwrap();
            proptest::prop_assert_eq!(&std::fs::read(out.join("mem")).unwrap(), want, "seq {}", seq);
        }
    }
}

/// A capture whose pages were copied out at `freeze` commits that instant, even though the
/// files (a running VM's RAM) change before `commit`; the next take then sees the change.
#[test]
fn frozen_copy_commits_the_frozen_instant() {
    for encrypted in [false, true] {
        let mut fx = Fixture::new("blake3", encrypted);
        let mem_path = fx.path("mem.img");
        let mut frozen_states = Vec::new();
        let mut mem = vm_like(200 * PAGE + 100, 9);
        for round in 0..4u64 {
            std::fs::write(&mem_path, &mem).unwrap();
            let (store, frozen) = fx.freeze_paused(&mem_path);
            frozen_states.push(mem.clone());
            // The "VM" runs on before the commit.
            mutate(&mut mem, 9, round * 7 + 5);
            std::fs::write(&mem_path, &mem).unwrap();
            fx.commit(&store, frozen, false).unwrap();
        }
        let store = Store::open(&fx.store).unwrap();
        let keys = fx.public();
        for (seq, want) in frozen_states.iter().enumerate() {
            let out = fx.path(&format!("out-{seq}"));
            store
                .restore(&fx.opts(&keys, Some(seq as u64)), &out)
                .unwrap();
            assert_eq!(&std::fs::read(out.join("mem")).unwrap(), want, "seq {seq}");
        }
        assert!(store.fsck().unwrap().is_clean());
    }
}

/// Restoring the head copies the head cache; a damaged cache is noticed by the hash of the copy
/// and the head is rebuilt from the chain instead.
#[test]
fn head_restore_survives_a_damaged_cache() {
    let mut fx = Fixture::new("sha256", false);
    let mem_path = fx.path("mem.img");
    let mut mem = vm_like(3000 * PAGE, 4);
    mem[100 * PAGE..160 * PAGE].fill(0);
    for round in 0..3u64 {
        std::fs::write(&mem_path, &mem).unwrap();
        fx.take(&[("mem", ComponentKind::Memory, &mem_path)]);
        if round < 2 {
            mutate(&mut mem, 40, round + 11);
        }
    }
    let store = Store::open(&fx.store).unwrap();
    let keys = fx.public();
    let out = fx.path("clean");
    store.restore(&fx.opts(&keys, None), &out).unwrap();
    assert_eq!(std::fs::read(out.join("mem")).unwrap(), mem);

    let cache = fx.store.join("head").join("0.img");
    let mut bytes = std::fs::read(&cache).unwrap();
    bytes[2000 * PAGE + 7] ^= 1;
    // Also where the image is zero: a rebuild leaves zero runs as holes, so bytes the copy left
    // there must not survive.
    let zero = (0..2980)
        .find(|&p| mem[p * PAGE..(p + 20) * PAGE].iter().all(|&b| b == 0))
        .expect("a run of 20 zero pages")
        + 10;
    bytes[zero * PAGE + 11] = 0xee;
    std::fs::write(&cache, &bytes).unwrap();
    // The kept baseline digests are derived data too: damaged, they are recomputed.
    let base = fx.store.join("head").join("0.base-diff");
    let mut d = std::fs::read(&base).unwrap();
    d[100] ^= 1;
    std::fs::write(&base, &d).unwrap();
    let out = fx.path("damaged");
    store.restore(&fx.opts(&keys, None), &out).unwrap();
    assert_eq!(std::fs::read(out.join("mem")).unwrap(), mem);
    // Cut short, as while a writer rebuilds it: the copy fails and the head is decoded.
    std::fs::File::options()
        .write(true)
        .open(&cache)
        .unwrap()
        .set_len(1000 * PAGE as u64)
        .unwrap();
    let out = fx.path("short");
    store.restore(&fx.opts(&keys, None), &out).unwrap();
    assert_eq!(std::fs::read(out.join("mem")).unwrap(), mem);
}

/// Cached page digests are reused for unchanged pages and cached bytes are XORed with changed
/// ones: a damaged digests file or page (behind a current stamp, as a power loss may leave
/// them, since the cache is not fsynced) makes the take rebuild the cache from the chain, and
/// never reaches a signed link.
#[test]
fn a_damaged_head_cache_is_rebuilt_before_a_take_uses_it() {
    let mut fx = Fixture::new("blake3", false);
    let mem_path = fx.path("mem.img");
    let mut mem = vm_like(64 * PAGE, 5);
    std::fs::write(&mem_path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mem_path)]);
    let head = fx.store.join("head");
    let flip = |name: &str, at: usize| {
        let path = head.join(name);
        let mut d = std::fs::read(&path).unwrap();
        d[at] ^= 1;
        std::fs::write(&path, &d).unwrap();
    };
    flip("0.digests", 3 * 32 + 1);
    mutate(&mut mem, 2, 99);
    std::fs::write(&mem_path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mem_path)]);
    // A changed page whose cached previous bytes are wrong.
    let changed = (0..64)
        .find(|&p| mem[p * PAGE..(p + 1) * PAGE].iter().any(|&b| b != 0))
        .unwrap();
    flip("0.img", changed * PAGE + 9);
    mem[changed * PAGE + 100] ^= 0x5a;
    std::fs::write(&mem_path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mem_path)]);
    let store = Store::open(&fx.store).unwrap();
    assert!(store.fsck().unwrap().is_clean());
    for seq in [1u64, 2] {
        let out = fx.path(&format!("out{seq}"));
        store
            .restore(&fx.opts(&fx.public(), Some(seq)), &out)
            .unwrap();
    }
    assert_eq!(std::fs::read(fx.path("out2").join("mem")).unwrap(), mem);
}

/// The head cache of an idle guest held every zero page as data: a second full copy of its
/// memory on disk (277 MiB for a 256 MiB guest).
#[test]
fn regression_the_head_cache_keeps_zero_pages_as_holes() {
    use std::os::unix::fs::MetadataExt as _;
    let mut fx = Fixture::new("blake3", false);
    let mem_path = fx.path("mem.img");
    let mut mem = vec![0u8; 64 << 20];
    mem[..1 << 20].copy_from_slice(&vec![0x5au8; 1 << 20]);
    std::fs::write(&mem_path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mem_path)]);
    let img = fx.store.join("head/0.img");
    let allocated = || std::fs::metadata(&img).unwrap().blocks() * 512;
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    assert!(
        allocated() <= (1 << 20) + (64 << 10),
        "{} bytes allocated",
        allocated()
    );
    // A delta that zeroes half of the data punches it out of the cache.
    mem[..512 << 10].fill(0);
    std::fs::write(&mem_path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &mem_path)]);
    assert!(
        allocated() <= (512 << 10) + (64 << 10),
        "{} bytes allocated",
        allocated()
    );
    // The head (copied from the sparse cache) and the baseline restore byte-identical.
    let store = Store::open(&fx.store).unwrap();
    let keys = fx.public();
    let out = fx.path("head");
    store.restore(&fx.opts(&keys, None), &out).unwrap();
    assert!(std::fs::read(out.join("mem")).unwrap() == mem);
    assert!(store.fsck().unwrap().cache_current);
}
