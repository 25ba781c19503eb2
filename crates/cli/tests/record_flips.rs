//! Property: any flipped bit in a signed record, its signature or the signed bytes fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use vmattest_core::alg::HashAlg;
use vmattest_core::record::{
    ImageMeasurement, MeasurementRecord, SignatureEntry, SignedRecord, UnixTime,
};
use vmattest_core::sig::SigAlg;
use vmattest_core::tree::{ImageTree, NoProgress, TreeParams};
use vmattest_sign::record::verify_signed;
use vmattest_sign::{PublicKey, SecretKey, Signer as _};

fn signed(alg: SigAlg) -> (Vec<u8>, PublicKey) {
    let key = SecretKey::generate(alg).unwrap();
    let params = TreeParams::new(HashAlg::Sha256, &[1, 2]).unwrap();
    let tree = ImageTree::build(&params, &[7u8; 3 * 4096], &NoProgress).unwrap();
    let record = MeasurementRecord {
        time: UnixTime {
            secs: 1_790_000_000,
            nanos: 5,
        },
        nonce: vec![9; 16],
        key_ids: vec![key.key_id()],
        images: vec![ImageMeasurement {
            path: "disk.img".into(),
            params,
            len: tree.len(),
            root: tree.root(),
        }],
    };
    let mut s = SignedRecord::new(record).unwrap();
    let signature = key.sign(&s.message()).unwrap();
    s.signatures.push(SignatureEntry {
        alg,
        key_id: key.key_id(),
        signature,
    });
    (s.encode().unwrap(), key.public_key())
}

fn accepts(bytes: &[u8], key: &PublicKey) -> bool {
    let Ok(s) = SignedRecord::decode(bytes) else {
        return false;
    };
    verify_signed(&s, std::slice::from_ref(key)).is_ok()
}

#[test]
fn every_bit_flip_is_detected() {
    for alg in SigAlg::ALL {
        let (bytes, key) = signed(alg);
        assert!(accepts(&bytes, &key));
        // Every bit for the short signatures; a stride through the long ML-DSA ones.
        let stride = if bytes.len() > 1000 { 7 } else { 1 };
        for bit in (0..bytes.len() * 8).step_by(stride) {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !accepts(&b, &key),
                "{alg}: flip of bit {bit} of {} accepted",
                bytes.len() * 8
            );
        }
    }
}

#[test]
fn re_encoding_is_canonical() {
    for alg in SigAlg::ALL {
        let (bytes, _) = signed(alg);
        assert_eq!(
            SignedRecord::decode(&bytes).unwrap().encode().unwrap(),
            bytes
        );
    }
}
