//! Trust boundaries as types: a verification always has pinned keys, and only a writer (which
//! holds the store lock) can change a store. Each test is named after the finding it pins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use vmattest_core::chain::ComponentKind;
use vmattest_core::class::{Classify as _, ErrorClass};
use vmattest_core::sig::SigAlg;
use vmattest_sign::{SecretKey, Signer as _};
use vmattest_store::{PinnedKeys, ReplayOptions, Store, StoreError};

fn chain() -> Fixture {
    let mut fx = Fixture::new("blake3", false);
    let mp = fx.path("mem.img");
    let mut mem = vm_like(16 * PAGE, 1);
    for round in 0..2 {
        std::fs::write(&mp, &mem).unwrap();
        fx.take(&[("mem", ComponentKind::Memory, &mp)]);
        mutate(&mut mem, 3, round + 1);
    }
    fx
}

/// `Store::verify` with default options used to return Ok for a chain signed by a key nobody
/// pinned. `ReplayOptions` now has no default and needs `&PinnedKeys`, which is never empty.
#[test]
fn regression_verify_without_pinned_keys_is_refused() {
    let e = PinnedKeys::new(Vec::new()).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Input, "{e}");
    assert!(e.to_string().contains("no public key pinned"), "{e}");

    let fx = chain();
    let store = Store::open(&fx.store).unwrap();
    let stranger = PinnedKeys::new(vec![
        SecretKey::generate(SigAlg::Ed25519).unwrap().public_key(),
    ])
    .unwrap();
    let e = store.verify(&ReplayOptions::new(&stranger)).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Verification, "{e}");
    let out = fx.path("restored");
    let e = store
        .restore(&ReplayOptions::new(&stranger), &out)
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Verification, "{e}");
    assert!(!out.exists());

    let keys = fx.public();
    assert_eq!(store.verify(&ReplayOptions::new(&keys)).unwrap().seq.0, 1);
}

/// A store opened for reading could be asked to take or repair and refused only at run time.
/// `Store` now has no mutating method (the doc tests on `Store` check that `take` and `repair`
/// do not compile on it); `StoreWriter` holds the lock and reads like a `Store`.
#[test]
fn regression_a_reader_has_no_mutating_method() {
    let fx = chain();
    let writer = Store::open_writer(&fx.store).unwrap();
    let e = Store::open_writer(&fx.store).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Environment);
    // Readers need no lock, and a writer reads like a reader.
    let reader = Store::open(&fx.store).unwrap();
    let keys = fx.public();
    let by_reader = reader.verify(&ReplayOptions::new(&keys)).unwrap();
    let by_writer = writer.verify(&ReplayOptions::new(&keys)).unwrap();
    assert_eq!(by_reader.link, by_writer.link);
    assert!(reader.fsck().unwrap().is_clean());
    assert!(writer.repair().unwrap().repaired);
}
