//! A store that keeps only the head's page digests (`head_cache: false`): every seq restores to
//! the bytes it captured, plain and encrypted, and `head/` holds no copy of a component larger
//! than a page.
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

fn takes(fx: &mut Fixture, rounds: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (mem_path, dev_path) = (fx.path("mem.img"), fx.path("dev.bin"));
    let mut mem = vm_like(200 * PAGE + 9, 7);
    let mut dev = b"device state v1".to_vec();
    let mut history = Vec::new();
    for round in 0..rounds {
        std::fs::write(&mem_path, &mem).unwrap();
        std::fs::write(&dev_path, &dev).unwrap();
        fx.take(&[
            ("mem", ComponentKind::Memory, &mem_path),
            ("dev", ComponentKind::DeviceState, &dev_path),
        ]);
        history.push((mem.clone(), dev.clone()));
        mutate(&mut mem, 12, round * 13 + 5);
        dev[0] = dev[0].wrapping_add(1);
        if round == 2 {
            // A stale cache is rebuilt from the chain, still without images.
            std::fs::remove_file(fx.store.join("head/stamp.json")).unwrap();
        }
    }
    history
}

#[test]
fn a_store_without_head_cache_keeps_digests_only_and_restores_every_seq() {
    for encrypted in [false, true] {
        let mut fx = Fixture::with_head_cache("sha256", encrypted, false);
        let history = takes(&mut fx, 6);
        let store = Store::open(&fx.store).unwrap();
        assert!(!store.meta().head_cache);
        let head: Vec<_> = files(&fx.store.join("head")).into_keys().collect();
        assert!(
            !head.iter().any(|p| p.to_str() == Some("0.img")),
            "encrypted {encrypted}: {head:?}"
        );
        assert!(head.iter().any(|p| p.to_str() == Some("0.digests")));
        let keys = fx.public();
        for (seq, (mem, dev)) in history.iter().enumerate() {
            let out = fx.path(&format!("out-{seq}"));
            let v = store
                .restore(&fx.opts(&keys, Some(seq as u64)), &out)
                .unwrap_or_else(|e| panic!("encrypted {encrypted}, seq {seq}: {e}"));
            assert_eq!(v.seq, SeqNo(seq as u64));
            assert_eq!(&std::fs::read(out.join("mem")).unwrap(), mem, "seq {seq}");
            assert_eq!(&std::fs::read(out.join("dev")).unwrap(), dev, "seq {seq}");
            std::fs::remove_dir_all(&out).unwrap();
        }
        assert!(store.fsck().unwrap().is_clean(), "encrypted {encrypted}");
    }
}

/// Without the previous bytes, changed pages are stored whole; the store stays near the size
/// of what a cached store keeps in links and objects, and far below it on disk.
#[test]
fn a_store_without_head_cache_is_smaller_on_disk() {
    let size = |head_cache: bool| {
        let mut fx = Fixture::with_head_cache("sha256", false, head_cache);
        takes(&mut fx, 4);
        files(&fx.store)
            .values()
            .map(|b| b.len() as u64)
            .sum::<u64>()
    };
    let (with, without) = (size(true), size(false));
    assert!(without < with, "without {without}, with {with}");
}

/// The digest files of a mostly-zero image are mostly holes in a sha256 store (every zero page
/// has one digest, written as zeros) and still give the head's tree: the next take finds
/// exactly the pages that changed.
#[test]
fn digest_files_of_zero_pages_are_holes() {
    use std::os::unix::fs::MetadataExt as _;
    let mut fx = Fixture::new("sha256", false);
    let path = fx.path("mem.img");
    let mut mem = vec![0u8; 4096 * PAGE];
    mem[..16 * PAGE].fill(7);
    std::fs::write(&path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &path)]);
    let m = std::fs::metadata(fx.store.join("head/0.digests")).unwrap();
    assert_eq!(m.len(), 4096 * 32);
    assert!(m.blocks() * 512 < m.len() / 4, "{} blocks", m.blocks());
    // The baseline's digests are kept as their differences from the head's: none yet.
    let head_dir = fx.store.join("head");
    let diff = || std::fs::read(head_dir.join("0.base-diff")).unwrap();
    assert_eq!(diff(), 4096u64.to_le_bytes());
    assert!(!head_dir.join("0.base-digests").exists());
    mem[100 * PAGE] = 1;
    std::fs::write(&path, &mem).unwrap();
    let t = fx.take(&[("mem", ComponentKind::Memory, &path)]);
    assert_eq!(t.changed_pages, 1);
    // One entry: page 100, with the digest it had at the baseline.
    let d = diff();
    assert_eq!(d.len(), 8 + 8 + 32);
    assert_eq!(d[8..16], 100u64.to_le_bytes());
    assert!(
        Store::open(&fx.store)
            .unwrap()
            .fsck()
            .unwrap()
            .cache_current
    );
}

/// A store from before base diffs keeps the baseline's digests whole: still used, and turned
/// into a diff at the next take.
#[test]
fn a_whole_kept_base_list_becomes_a_diff() {
    let mut fx = Fixture::new("sha256", false);
    let path = fx.path("mem.img");
    let mut mem = vm_like(600 * PAGE, 3);
    std::fs::write(&path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &path)]);
    let head = fx.store.join("head");
    std::fs::copy(head.join("0.digests"), head.join("0.base-digests")).unwrap();
    std::fs::remove_file(head.join("0.base-diff")).unwrap();
    mem[7 * PAGE] ^= 1;
    mem[9 * PAGE] ^= 1;
    std::fs::write(&path, &mem).unwrap();
    fx.take(&[("mem", ComponentKind::Memory, &path)]);
    assert!(!head.join("0.base-digests").exists());
    let d = std::fs::read(head.join("0.base-diff")).unwrap();
    assert_eq!(d.len(), 8 + 2 * (8 + 32));
    assert_eq!(d[8..16], 7u64.to_le_bytes());
    let store = Store::open(&fx.store).unwrap();
    let keys = fx.public();
    for seq in [0, 1] {
        let out = fx.path(&format!("out-{seq}"));
        store.restore(&fx.opts(&keys, Some(seq)), &out).unwrap();
    }
}
