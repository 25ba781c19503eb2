//! Anchor links: every seq of a chain with anchors (by interval and on demand) restores to the
//! bytes it captured, plain and encrypted, with and without the head cache, after a prune too;
//! an anchor stores the pages changed since the previous one whole; the interval makes one only
//! where the links rewrote the same pages.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use vmattest_core::chain::{ComponentKind, PageChange, SeqNo};
use vmattest_store::{PruneOptions, Store};

type History = Vec<(Vec<u8>, Vec<u8>)>;

/// Takes `rounds` links; round `on_demand` is an anchor by request. The memory's first pages are
/// rewritten every round (a working set), the rest now and then.
fn takes(
    fx: &mut Fixture,
    rounds: u64,
    on_demand: u64,
) -> (History, Vec<vmattest_store::TakeSummary>) {
    let (mem_path, dev_path) = (fx.path("mem.img"), fx.path("dev.bin"));
    let mut mem = vm_like(300 * PAGE + 11, 3);
    let mut dev = b"device state v1".to_vec();
    let (mut history, mut summaries) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        std::fs::write(&mem_path, &mem).unwrap();
        std::fs::write(&dev_path, &dev).unwrap();
        let s = fx
            .take_as(
                &[
                    ("mem", ComponentKind::Memory, &mem_path),
                    ("dev", ComponentKind::DeviceState, &dev_path),
                ],
                round == on_demand,
            )
            .unwrap();
        summaries.push(s);
        history.push((mem.clone(), dev.clone()));
        mutate(&mut mem[..4 * PAGE], 8, round * 7 + 1);
        mutate(&mut mem, 1, round * 11 + 2);
        dev[0] = dev[0].wrapping_add(1);
    }
    (history, summaries)
}

fn restores_every_seq(fx: &Fixture, history: &History, from: u64, what: &str) {
    let store = Store::open(&fx.store).unwrap();
    let keys = fx.public();
    for (seq, (mem, dev)) in history.iter().enumerate().skip(from as usize) {
        let out = fx.path(&format!("out-{seq}"));
        let v = store
            .restore(&fx.opts(&keys, Some(seq as u64)), &out)
            .unwrap_or_else(|e| panic!("{what}, seq {seq}: {e}"));
        assert_eq!(v.seq, SeqNo(seq as u64));
        assert_eq!(
            &std::fs::read(out.join("mem")).unwrap(),
            mem,
            "{what}, seq {seq}"
        );
        assert_eq!(
            &std::fs::read(out.join("dev")).unwrap(),
            dev,
            "{what}, seq {seq}"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
    assert!(store.fsck().unwrap().is_clean(), "{what}");
}

#[test]
fn anchor_links_restore_every_seq_byte_identical() {
    for (alg, encrypted, head_cache) in [
        ("blake3", false, true),
        ("sha256", true, true),
        ("sha256", false, false),
    ] {
        let what = format!("{alg}, encrypted {encrypted}, head cache {head_cache}");
        let mut fx = Fixture::with_layout(alg, encrypted, head_cache, 4);
        let (history, sums) = takes(&mut fx, 14, 6);
        // By the interval at 4 and 12, on demand at 6; at 8 the anchor would stand for one
        // link only and hold about as many pages as it and the new ones: none.
        let anchors: Vec<u64> = sums.iter().filter(|s| s.anchor).map(|s| s.seq.0).collect();
        assert_eq!(anchors, [4, 6, 12], "{what}");
        // An anchor carries pages the links since the previous anchor changed.
        assert!(sums[4].carried_pages > 0, "{what}");
        assert!(
            sums.iter()
                .filter(|s| !s.anchor)
                .all(|s| s.carried_pages == 0)
        );
        restores_every_seq(&fx, &history, 0, &what);

        // Its manifest holds no XORs, and lists the pages seqs 5 and 6 changed.
        let store = Store::open(&fx.store).unwrap();
        let head = store.head().unwrap().unwrap();
        let m6 = store.manifest_at(&head, SeqNo(6)).unwrap();
        assert!(m6.anchor && m6.entries.iter().all(|e| e.change != PageChange::Data));
        for e in store.manifest_at(&head, SeqNo(5)).unwrap().entries {
            assert!(
                m6.entries
                    .binary_search_by(|x| (x.component, x.page).cmp(&(e.component, e.page)))
                    .is_ok(),
                "{what}: seq 5's page {} not in the anchor",
                e.page.0
            );
        }
        assert!(!store.manifest_at(&head, SeqNo(7)).unwrap().anchor);
    }
}

/// A guest that writes all over its memory gets no anchor by the interval: it would hold as many
/// pages as the links it stands for.
#[test]
fn the_interval_makes_no_anchor_that_saves_nothing() {
    let mut fx = Fixture::with_layout("blake3", false, true, 2);
    let path = fx.path("mem.img");
    let mut mem = vm_like(200 * PAGE, 4);
    for round in 0..6u64 {
        std::fs::write(&path, &mem).unwrap();
        let s = fx.take(&[("mem", ComponentKind::Memory, &path)]);
        assert!(!s.anchor, "round {round}");
        // Disjoint pages every round.
        let at = (round as usize * 20 + 10) * PAGE;
        mem[at..at + 10 * PAGE]
            .iter_mut()
            .for_each(|b| *b = b.wrapping_add(1));
    }
}

#[test]
fn anchors_after_a_prune_still_restore_every_kept_seq() {
    let mut fx = Fixture::with_layout("blake3", false, true, 3);
    let (history, _) = takes(&mut fx, 10, 99);
    let keys = fx.public();
    let writer = Store::open_writer(&fx.store).unwrap();
    let signers: [&dyn vmattest_sign::Signer; 1] = [&fx.key];
    writer
        .prune(&PruneOptions {
            keep: Some(5),
            keep_since: None,
            keys: &keys,
            secret: None,
            signers: &signers,
            time: vmattest_core::record::UnixTime {
                secs: fx.time + 1,
                nanos: 0,
            },
        })
        .unwrap();
    drop(writer);
    restores_every_seq(&fx, &history, 5, "after the prune");
    // The next anchor follows the rebase.
    let mut fx2 = fx;
    let (mem_path, dev_path) = (fx2.path("mem.img"), fx2.path("dev.bin"));
    let s = fx2
        .take_as(
            &[
                ("mem", ComponentKind::Memory, &mem_path),
                ("dev", ComponentKind::DeviceState, &dev_path),
            ],
            true,
        )
        .unwrap();
    assert!(s.anchor);
    let mut history = history;
    history.push((
        std::fs::read(&mem_path).unwrap(),
        std::fs::read(&dev_path).unwrap(),
    ));
    restores_every_seq(&fx2, &history, 5, "an anchor after the prune");
}

/// A paused guest's capture copies out only its changed pages and the guest runs on before the
/// commit: an anchor's carried pages come from the head cache, never from the changed files.
/// Without the cache such an anchor cannot be made: asked for, it is refused and nothing changes.
#[test]
fn an_anchor_of_a_running_guest_reads_the_head_cache() {
    for head_cache in [true, false] {
        let mut fx = Fixture::with_layout("blake3", false, head_cache, 0);
        let mem_path = fx.path("mem.img");
        let mut mem = vm_like(120 * PAGE, 5);
        let mut captured = Vec::new();
        for round in 0..5u64 {
            std::fs::write(&mem_path, &mem).unwrap();
            let (store, frozen) = fx.freeze_paused(&mem_path);
            // The guest runs on before the commit.
            let at_freeze = mem.clone();
            mutate(&mut mem, 9, round * 5 + 3);
            std::fs::write(&mem_path, &mem).unwrap();
            if !head_cache && round == 3 {
                let before = files(&fx.store.join("links"));
                let err = fx.commit(&store, frozen, true).unwrap_err();
                assert!(err.to_string().contains("an anchor needs"), "{err}");
                assert_eq!(files(&fx.store.join("links")), before);
                mem = at_freeze;
                continue;
            }
            let anchor = head_cache && round % 2 == 0 && round > 0;
            let s = fx.commit(&store, frozen, anchor).unwrap();
            assert_eq!(s.anchor, anchor, "round {round}");
            captured.push(at_freeze);
        }
        let store = Store::open(&fx.store).unwrap();
        let keys = fx.public();
        for (seq, want) in captured.iter().enumerate() {
            let out = fx.path(&format!("out-{seq}"));
            store
                .restore(&fx.opts(&keys, Some(seq as u64)), &out)
                .unwrap_or_else(|e| panic!("head cache {head_cache}, seq {seq}: {e}"));
            assert_eq!(&std::fs::read(out.join("mem")).unwrap(), want, "seq {seq}");
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
}

/// An anchor whose carried page claims a digest the page did not have at the seq before, signed
/// by the chain's own key, is refused naming the seq, component and page.
#[test]
fn a_carried_page_that_changed_is_refused() {
    let mut fx = Fixture::with_layout("blake3", false, true, 0);
    takes(&mut fx, 4, 3);
    let store = Store::open(&fx.store).unwrap();
    let signed = store.read_link(SeqNo(3)).unwrap();
    let mut manifest = store.read_manifest(signed.value()).unwrap();
    assert!(manifest.anchor);
    let (k, carried) = (manifest.entries.iter().enumerate())
        .find(|(_, e)| e.change == PageChange::Carried)
        .map(|(k, e)| (k, e.clone()))
        .unwrap();
    let other = (manifest.entries.iter())
        .find(|e| e.digest != carried.digest)
        .unwrap()
        .digest;
    manifest.entries[k].digest = other;
    let link = vmattest_core::chain::Link {
        manifest: write_object(&fx.store, &manifest.encode()),
        delta: vmattest_core::chain::delta_digest(other.alg(), &manifest.entries),
        ..signed.value().clone()
    };
    resign_head(&fx.store, &fx.key, link);
    let keys = fx.public();
    let e = Store::open(&fx.store)
        .unwrap()
        .verify(&fx.opts(&keys, None))
        .unwrap_err();
    assert!(
        matches!(&e, vmattest_store::StoreError::Verification {
            seq: SeqNo(3),
            broken: vmattest_store::Broken::Carried { component, page },
        } if component == "mem" && *page == carried.page),
        "{e}"
    );
}
