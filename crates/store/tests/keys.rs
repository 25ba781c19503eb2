//! Key lifecycle: a rotated chain verifies with only its first key; a take with a key the chain
//! did not announce is refused; links signed from a key's revocation on are refused; a
//! revoker's successor takes over; prunes and bundles carry what a verifier needs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use vmattest_core::chain::{ComponentKind, KeyError, Revocation, SeqNo, SignedRevocation};
use vmattest_core::record::UnixTime;
use vmattest_core::sig::SigAlg;
use vmattest_sign::{PublicKey, SecretKey, Signer};
use vmattest_store::{Broken, PinnedKeys, PruneOptions, Store, StoreError};

fn key() -> SecretKey {
    SecretKey::generate(SigAlg::Ed25519).unwrap()
}

fn pinned(k: &SecretKey) -> PinnedKeys {
    PinnedKeys::new(vec![k.public_key()]).unwrap()
}

/// A one-component chain whose memory changes a little at every take.
struct Chain {
    fx: Fixture,
    mem: Vec<u8>,
    round: u64,
}

impl Chain {
    fn new() -> Chain {
        Chain {
            fx: Fixture::new("blake3", false),
            mem: vm_like(40 * PAGE, 5),
            round: 0,
        }
    }

    fn take(&mut self, keys: &Keys<'_>) -> Result<SeqNo, StoreError> {
        let path = self.fx.path("mem.img");
        self.round += 1;
        self.mem[(self.round as usize % 40) * PAGE] ^= 0x5a;
        std::fs::write(&path, &self.mem).unwrap();
        let s = self
            .fx
            .take_signed(&[("mem", ComponentKind::Memory, &path)], keys)?;
        Ok(s.seq)
    }

    fn by(&mut self, k: &SecretKey) -> Result<SeqNo, StoreError> {
        let signers: [&dyn Signer; 1] = [k];
        self.take(&Keys::signers(&signers))
    }

    fn rotate(&mut self, from: &SecretKey, to: &SecretKey) -> SeqNo {
        let (signers, rotate): ([&dyn Signer; 1], [&dyn Signer; 1]) = ([from], [to]);
        self.take(&Keys {
            signers: &signers,
            rotate_to: &rotate,
            revokers: &[],
        })
        .unwrap()
    }

    fn baseline_with_revoker(&mut self, k: &SecretKey, revoker: PublicKey) {
        let signers: [&dyn Signer; 1] = [k];
        let revokers = [revoker];
        self.take(&Keys {
            signers: &signers,
            rotate_to: &[],
            revokers: &revokers,
        })
        .unwrap();
    }

    fn verify(&self, keys: &PinnedKeys) -> Result<SeqNo, StoreError> {
        let store = Store::open(&self.fx.store).unwrap();
        store.verify(&self.fx.opts(keys, None)).map(|v| v.seq)
    }

    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for dir in ["links", "revocations"] {
            let Ok(rd) = std::fs::read_dir(self.fx.store.join(dir)) else {
                continue;
            };
            for e in rd {
                let e = e.unwrap();
                out.push((
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
        out.push((
            "HEAD".into(),
            std::fs::read(self.fx.store.join("HEAD")).unwrap(),
        ));
        out.sort();
        out
    }
}

fn revocation(
    chain: &Chain,
    of: &SecretKey,
    from: u64,
    successors: &[&SecretKey],
    by: &[&SecretKey],
) -> SignedRevocation {
    let store = Store::open(&chain.fx.store).unwrap();
    let signers: Vec<&dyn Signer> = by.iter().map(|k| *k as &dyn Signer).collect();
    let rev = Revocation {
        origin: store.origin().unwrap(),
        key: of.key_id(),
        from: SeqNo(from),
        successors: successors
            .iter()
            .map(|k| k.public_key().to_chain_key())
            .collect(),
        reason: "host retired".into(),
        time: UnixTime {
            secs: 1_900_000_000,
            nanos: 0,
        },
        key_ids: signers.iter().map(|s| s.key_id()).collect(),
    };
    vmattest_sign::signing::sign(rev, &signers).unwrap()
}

fn add(chain: &Chain, rev: &SignedRevocation, first: &SecretKey) -> Result<String, StoreError> {
    Store::open_writer(&chain.fx.store)
        .unwrap()
        .add_revocation(rev, &pinned(first))
}

#[test]
fn rotated_chain_verifies_with_only_the_first_key() {
    let (a, b, c) = (key(), key(), key());
    let mut ch = Chain::new();
    ch.by(&a).unwrap();
    ch.by(&a).unwrap();
    assert_eq!(ch.rotate(&a, &b), SeqNo(2));
    ch.by(&b).unwrap();
    assert_eq!(ch.rotate(&b, &c), SeqNo(4));
    ch.by(&c).unwrap();
    assert_eq!(ch.verify(&pinned(&a)).unwrap(), SeqNo(5));
    // Pinning a later key is not pinning the chain's first.
    let e = ch.verify(&pinned(&b)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Verification {
                seq: SeqNo(0),
                broken: Broken::Keys(KeyError::Signers { .. })
            }
        ),
        "{e}"
    );
}

#[test]
fn regression_a_take_signed_by_another_key_was_accepted() {
    let (a, b, stranger) = (key(), key(), key());
    let mut ch = Chain::new();
    ch.by(&a).unwrap();
    let before = ch.files();
    let e = ch.by(&stranger).unwrap_err();
    assert!(e.to_string().contains("a new key joins by rotation"), "{e}");
    assert!(e.to_string().contains(&a.key_id().to_hex()), "{e}");
    assert!(before == ch.files(), "a refused take changed the chain");
    // Co-signing with an extra key is a key change too.
    let signers: [&dyn Signer; 2] = [&a, &stranger];
    assert!(ch.take(&Keys::signers(&signers)).is_err());

    // After a rotation the retired key may not sign.
    ch.rotate(&a, &b);
    let before = ch.files();
    assert!(ch.by(&a).is_err());
    assert!(before == ch.files());
    ch.by(&b).unwrap();
    // Revokers come with the baseline only.
    let signers: [&dyn Signer; 1] = [&b];
    let revokers = [stranger.public_key()];
    let e = ch
        .take(&Keys {
            signers: &signers,
            rotate_to: &[],
            revokers: &revokers,
        })
        .unwrap_err();
    assert!(e.to_string().contains("baseline"), "{e}");
    ch.verify(&pinned(&a)).unwrap();
}

#[test]
fn links_signed_after_a_revocation_are_refused() {
    let a = key();
    let mut ch = Chain::new();
    for _ in 0..4 {
        ch.by(&a).unwrap();
    }
    // The key's holder revokes it from seq 2, after the fact.
    let rev = revocation(&ch, &a, 2, &[], &[&a]);
    add(&ch, &rev, &a).unwrap();
    let e = ch.verify(&pinned(&a)).unwrap_err();
    assert!(
        matches!(
            &e,
            StoreError::Verification {
                seq: SeqNo(2),
                broken: Broken::Keys(KeyError::Revoked { from: SeqNo(2), .. })
            }
        ),
        "{e}"
    );
    // The links before the revocation still verify, and nothing more can be added.
    let store = Store::open(&ch.fx.store).unwrap();
    let keys = pinned(&a);
    assert_eq!(
        store.verify(&ch.fx.opts(&keys, Some(1))).unwrap().seq,
        SeqNo(1)
    );
    let e = ch.by(&a).unwrap_err();
    assert!(e.to_string().contains("revoked from seq 2"), "{e}");
}

#[test]
fn a_revokers_successor_signs_in_the_revoked_keys_place() {
    let (a, b, admin, stranger) = (key(), key(), key(), key());
    let mut ch = Chain::new();
    ch.baseline_with_revoker(&a, admin.public_key());
    ch.by(&a).unwrap();
    // From seq 2 on, b signs for a.
    let rev = revocation(&ch, &a, 2, &[&b], &[&admin]);
    add(&ch, &rev, &a).unwrap();
    assert!(ch.by(&a).is_err());
    assert_eq!(ch.by(&b).unwrap(), SeqNo(2));
    ch.by(&b).unwrap();
    assert_eq!(ch.verify(&pinned(&a)).unwrap(), SeqNo(3));

    // Only the key itself or the baseline's revokers may revoke; only revokers name
    // successors; a key the chain never used cannot be revoked in it.
    let before = ch.files();
    for (bad, why) in [
        (revocation(&ch, &b, 3, &[], &[&stranger]), "neither"),
        (revocation(&ch, &b, 3, &[&stranger], &[&b]), "successors"),
        (
            revocation(&ch, &stranger, 3, &[], &[&stranger]),
            "not a signing key",
        ),
    ] {
        let e = add(&ch, &bad, &a).unwrap_err();
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    assert!(before == ch.files());
}

#[test]
fn a_planted_revocation_fails_verification_by_name() {
    let (a, stranger) = (key(), key());
    let mut ch = Chain::new();
    ch.by(&a).unwrap();
    ch.by(&a).unwrap();
    let forged = revocation(&ch, &a, 1, &[], &[&stranger]);
    let dir = ch.fx.store.join("revocations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("planted.rev"), forged.encode().unwrap()).unwrap();
    let e = ch.verify(&pinned(&a)).unwrap_err();
    assert!(
        matches!(&e, StoreError::Verification { broken: Broken::Revocation { file, .. }, .. } if file.contains("planted.rev")),
        "{e}"
    );
    // A damaged one is named too.
    std::fs::write(dir.join("planted.rev"), b"not a revocation").unwrap();
    let e = ch.verify(&pinned(&a)).unwrap_err();
    assert!(e.to_string().contains("planted.rev"), "{e}");
}

#[test]
fn a_prune_past_rotations_keeps_the_path_from_the_first_key() {
    let (a, b, c) = (key(), key(), key());
    let mut ch = Chain::new();
    ch.by(&a).unwrap();
    ch.rotate(&a, &b);
    ch.by(&b).unwrap();
    ch.rotate(&b, &c);
    for _ in 0..3 {
        ch.by(&c).unwrap();
    }
    let keys = pinned(&a);
    let store = Store::open_writer(&ch.fx.store).unwrap();
    let prune = |given: &[&SecretKey]| {
        let signers: Vec<&dyn Signer> = given.iter().map(|k| *k as &dyn Signer).collect();
        store.prune(&PruneOptions {
            keep: Some(2),
            keep_since: None,
            keys: &keys,
            secret: None,
            signers: &signers,
            time: UnixTime {
                secs: 1_900_000_000,
                nanos: 0,
            },
        })
    };
    // The rebase is signed by the keys in force after its seq; others given are not used.
    let e = prune(&[&a]).unwrap_err();
    assert!(e.to_string().contains("keys in force"), "{e}");
    let s = prune(&[&a, &c]).unwrap();
    assert_eq!(s.base, 5);
    drop(store);
    let rebase = Store::open(&ch.fx.store)
        .unwrap()
        .read_rebase(SeqNo(5))
        .unwrap();
    let carried: Vec<u64> = rebase
        .value()
        .key_links
        .iter()
        .map(|l| l.value().seq.0)
        .collect();
    assert_eq!(carried, [1, 3]);
    assert_eq!(ch.verify(&keys).unwrap(), SeqNo(6));
    ch.by(&c).unwrap();
    assert_eq!(ch.verify(&keys).unwrap(), SeqNo(7));
    assert!(ch.verify(&pinned(&c)).is_err());
}

#[test]
fn a_bundle_carries_the_revocations_its_links_need() {
    let (a, b, admin) = (key(), key(), key());
    let mut ch = Chain::new();
    ch.baseline_with_revoker(&a, admin.public_key());
    ch.by(&a).unwrap();
    add(&ch, &revocation(&ch, &a, 2, &[&b], &[&admin]), &a).unwrap();
    ch.by(&b).unwrap();
    let bundle = ch.fx.path("all.bundle");
    Store::open(&ch.fx.store)
        .unwrap()
        .export(SeqNo(0), None, &bundle)
        .unwrap();
    let target = ch.fx.path("copy");
    let keys = pinned(&a);
    let s = Store::import(&target, &bundle, &ch.fx.opts(&keys, None)).unwrap();
    assert_eq!(s.verified.seq, SeqNo(2));
    let copy = Store::open(&target).unwrap();
    assert_eq!(copy.revocations().unwrap().len(), 1);
    copy.verify(&ch.fx.opts(&keys, None)).unwrap();
}

#[test]
fn a_rebase_is_signed_by_the_keys_in_force_at_its_seq_not_the_heads() {
    let (a, b) = (key(), key());
    let mut ch = Chain::new();
    for _ in 0..3 {
        ch.by(&a).unwrap();
    }
    ch.rotate(&a, &b);
    ch.by(&b).unwrap();
    // Keep 3: the fold's seq is 2, before the rotation; a signs the rebase, b's key is unused.
    let keys = pinned(&a);
    let store = Store::open_writer(&ch.fx.store).unwrap();
    let signers: [&dyn Signer; 2] = [&b, &a];
    let s = store
        .prune(&PruneOptions {
            keep: Some(3),
            keep_since: None,
            keys: &keys,
            secret: None,
            signers: &signers,
            time: UnixTime {
                secs: 1_900_000_000,
                nanos: 0,
            },
        })
        .unwrap();
    assert_eq!(s.base, 2);
    drop(store);
    let rebase = Store::open(&ch.fx.store)
        .unwrap()
        .read_rebase(SeqNo(2))
        .unwrap();
    assert_eq!(rebase.value().key_ids, [a.key_id()]);
    assert_eq!(ch.verify(&keys).unwrap(), SeqNo(4));
}
