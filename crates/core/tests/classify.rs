//! Error classes of the core's main failures: a check that ran and failed is Verification,
//! malformed or truncated bytes and bad parameters are Input, whichever decoder meets them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use vmattest_core::alg::{HashAlg, PageIndex};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::{
    ImageMeasurement, MeasurementRecord, RecordError, SignatureEntry, SignedRecord, UnixTime,
    check_signer_ids,
};
use vmattest_core::sig::{KeyId, SigAlg};
use vmattest_core::tree::{ImageTree, NoProgress, PageProof, ProofError, TreeError, TreeParams};
use vmattest_core::wire::WireError;

fn record(keys: Vec<KeyId>) -> MeasurementRecord {
    let params = TreeParams::new(HashAlg::Blake3, &[]).unwrap();
    MeasurementRecord {
        time: UnixTime { secs: 1, nanos: 0 },
        nonce: Vec::new(),
        key_ids: keys,
        images: vec![ImageMeasurement {
            path: "disk".into(),
            root: params.alg().zero_digest(),
            params,
            len: 4096,
        }],
    }
}

fn signed_bytes() -> Vec<u8> {
    let mut s = SignedRecord::new(record(vec![KeyId([1; 32])])).unwrap();
    s.signatures.push(SignatureEntry {
        alg: SigAlg::Ed25519,
        key_id: KeyId([1; 32]),
        signature: vec![0; 64],
    });
    s.encode().unwrap()
}

#[test]
fn truncated_and_malformed_records_are_input() {
    let bytes = signed_bytes();
    for cut in [0, 7, 20, bytes.len() - 1] {
        let e = SignedRecord::decode(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(e, RecordError::Wire(WireError::Truncated { .. })),
            "cut {cut}: {e:?}"
        );
        assert_eq!(e.class(), ErrorClass::Input, "cut {cut}");
    }
    let mut bad = bytes.clone();
    bad[0] ^= 0xff;
    let e = SignedRecord::decode(&bad).unwrap_err();
    assert!(matches!(e, RecordError::Wire(WireError::BadMagic { .. })));
    assert_eq!(e.class(), ErrorClass::Input);
}

#[test]
fn a_record_signed_by_fewer_keys_than_it_names_fails_verification() {
    let named = [KeyId([1; 32]), KeyId([2; 32])];
    let e = check_signer_ids(&named, &named[..1]).unwrap_err();
    assert!(matches!(e, RecordError::SignerCount { named: 2, found: 1 }));
    assert_eq!(e.class(), ErrorClass::Verification);

    // The same envelope cannot be encoded either.
    let mut s = SignedRecord::new(record(named.to_vec())).unwrap();
    s.signatures.push(SignatureEntry {
        alg: SigAlg::Ed25519,
        key_id: named[0],
        signature: vec![0; 64],
    });
    assert_eq!(s.encode().unwrap_err().class(), ErrorClass::Verification);
}

#[test]
fn a_signature_by_a_key_the_record_does_not_name_fails_verification() {
    let e = check_signer_ids(&[KeyId([1; 32])], &[KeyId([9; 32])]).unwrap_err();
    assert!(matches!(e, RecordError::UnnamedSigner { index: 0, .. }));
    assert_eq!(e.class(), ErrorClass::Verification);
}

#[test]
fn a_proof_that_does_not_lead_to_the_root_fails_verification() {
    let params = TreeParams::new(HashAlg::Sha256, &[]).unwrap();
    let image: Vec<u8> = (0..5 * 4096u32).map(|i| (i % 251) as u8).collect();
    let tree = ImageTree::build(&params, &image, &NoProgress).unwrap();
    let mut proof = tree.prove(&image, PageIndex(2), 1).unwrap();
    proof.verify().unwrap();
    proof.pages[17] ^= 1;
    let e = proof.verify().unwrap_err();
    assert!(matches!(e, ProofError::RootMismatch { .. }));
    assert_eq!(e.class(), ErrorClass::Verification);

    let bytes = proof.encode();
    let e = PageProof::decode(&bytes[..bytes.len() - 3]).unwrap_err();
    assert!(matches!(e, ProofError::Wire(WireError::Truncated { .. })));
    assert_eq!(e.class(), ErrorClass::Input);
}

#[test]
fn bad_tree_parameters_are_input() {
    let e = TreeParams::new(HashAlg::Blake3, &[1]).unwrap_err();
    assert!(matches!(e, TreeError::SaltNotAllowed { .. }));
    assert_eq!(e.class(), ErrorClass::Input);
    let e = TreeParams::new(HashAlg::Sha256, &[0; 257]).unwrap_err();
    assert!(matches!(e, TreeError::SaltTooLong { found: 257 }));
    assert_eq!(ProofError::from(e).class(), ErrorClass::Input);
}
