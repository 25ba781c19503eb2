#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Sign / verify / PEM round trips and tamper detection for every algorithm.

use proptest::prelude::*;
use vmattest_sign::{
    PublicKey, SecretKey, SigAlg, SignError, Signer, public_key_len, signature_len,
};

const MSG: &[u8] = b"vmattest: the image root is 0123456789abcdef";

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

/// Every bit of short signatures; for long ones, every bit of the first and last 8 bytes and
/// of 4 bytes either side of the hybrid's split, plus an even spread.
fn sig_bits(alg: SigAlg) -> Vec<usize> {
    let bits = signature_len(alg) * 8;
    if bits <= 768 {
        return (0..bits).collect();
    }
    let mut v: Vec<usize> = (0..64).chain(bits - 64..bits).collect();
    if alg == SigAlg::HybridEd25519MlDsa65 {
        v.extend(64 * 8 - 32..64 * 8 + 32);
    }
    v.extend((0..bits).step_by(bits / 100).map(|b| (b * 7 + 3) % bits));
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn sign_verify_round_trip_every_alg() {
    for alg in SigAlg::ALL {
        let sk = SecretKey::generate(alg).unwrap();
        assert_eq!(sk.alg(), alg);
        let pk = sk.public_key();
        assert_eq!(pk.alg(), alg);
        assert_eq!(pk.raw().len(), public_key_len(alg));
        assert_eq!(sk.key_id(), pk.key_id());
        assert_eq!(
            pk.key_id(),
            vmattest_sign::KeyId::of_public_key(alg, pk.raw())
        );
        let sig = sk.sign(MSG).unwrap();
        assert_eq!(sig.len(), signature_len(alg), "{alg}");
        pk.verify(MSG, &sig).unwrap();
        pk.verify(b"", &sk.sign(b"").unwrap()).unwrap();
        // from_raw accepts what public_key() produced.
        assert_eq!(PublicKey::from_raw(alg, pk.raw()).unwrap(), pk);
    }
}

#[test]
fn pem_round_trip_preserves_key_id() {
    for alg in SigAlg::ALL {
        let sk = SecretKey::generate(alg).unwrap();
        let pem = sk.to_pem();
        let blocks = if alg == SigAlg::HybridEd25519MlDsa65 {
            2
        } else {
            1
        };
        assert_eq!(pem.matches("-----BEGIN PRIVATE KEY-----\n").count(), blocks);
        let back = SecretKey::from_pem(&pem).unwrap();
        assert_eq!(back.alg(), alg);
        assert_eq!(back.key_id(), sk.key_id());
        assert_eq!(*back.to_pem(), *pem, "{alg}: re-encoding is byte-identical");
        // The reloaded key signs for the original public key.
        sk.public_key()
            .verify(MSG, &back.sign(MSG).unwrap())
            .unwrap();

        let pub_pem = sk.public_key().to_pem();
        assert_eq!(
            pub_pem.matches("-----BEGIN PUBLIC KEY-----\n").count(),
            blocks
        );
        let pk = PublicKey::from_pem(&pub_pem).unwrap();
        assert_eq!(pk, sk.public_key());
        assert_eq!(pk.key_id(), sk.key_id());
        assert_eq!(pk.to_pem(), pub_pem);
        // CRLF line endings are read too.
        let crlf = pub_pem.replace('\n', "\r\n");
        assert_eq!(PublicKey::from_pem(&crlf).unwrap(), pk);
    }
}

fn check_signature_flips(alg: SigAlg) {
    let sk = SecretKey::generate(alg).unwrap();
    let pk = sk.public_key();
    let sig = sk.sign(MSG).unwrap();
    for bit in sig_bits(alg) {
        let err = pk.verify(MSG, &flip(&sig, bit)).unwrap_err();
        assert!(
            matches!(err, SignError::BadSignature { alg: a, key_id } if a == alg && key_id == pk.key_id()),
            "{alg}: bit {bit}: {err:?}"
        );
    }
}

fn check_message_flips(alg: SigAlg) {
    let sk = SecretKey::generate(alg).unwrap();
    let pk = sk.public_key();
    let sig = sk.sign(MSG).unwrap();
    let step = if signature_len(alg) <= 96 { 1 } else { 5 };
    for bit in (0..MSG.len() * 8).step_by(step) {
        assert!(
            pk.verify(&flip(MSG, bit), &sig).is_err(),
            "{alg}: message bit {bit}"
        );
    }
    assert!(pk.verify(&MSG[..MSG.len() - 1], &sig).is_err());
    assert!(pk.verify(&[MSG, b"x"].concat(), &sig).is_err());
}

macro_rules! flip_tests {
    ($($name:ident: $alg:expr;)*) => {
        mod flips {
            use super::*;
            $(
                mod $name {
                    use super::*;
                    #[test]
                    fn every_flipped_signature_bit_fails() {
                        check_signature_flips($alg);
                    }
                    #[test]
                    fn every_flipped_message_bit_fails() {
                        check_message_flips($alg);
                    }
                }
            )*
        }
    };
}

flip_tests! {
    ed25519: SigAlg::Ed25519;
    p384: SigAlg::EcdsaP384;
    ml_dsa_65: SigAlg::MlDsa65;
    hybrid: SigAlg::HybridEd25519MlDsa65;
}

#[test]
fn signature_from_another_key_fails() {
    for alg in SigAlg::ALL {
        let a = SecretKey::generate(alg).unwrap();
        let b = SecretKey::generate(alg).unwrap();
        assert_ne!(a.key_id(), b.key_id());
        let err = a
            .public_key()
            .verify(MSG, &b.sign(MSG).unwrap())
            .unwrap_err();
        assert!(
            matches!(err, SignError::BadSignature { .. }),
            "{alg}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("signature does not verify under {alg} key {}", a.key_id())
        );
    }
}

#[test]
fn wrong_signature_lengths_are_length_errors() {
    for alg in SigAlg::ALL {
        let sk = SecretKey::generate(alg).unwrap();
        let pk = sk.public_key();
        let sig = sk.sign(MSG).unwrap();
        let n = sig.len();
        let cases = [
            sig[..n - 1].to_vec(),
            [sig.as_slice(), &[0]].concat(),
            Vec::new(),
            sig[..n / 2].to_vec(),
        ];
        for bad in cases {
            let err = pk.verify(MSG, &bad).unwrap_err();
            match err {
                SignError::SignatureLength {
                    alg: a,
                    expected,
                    found,
                } => {
                    assert_eq!((a, expected, found), (alg, n, bad.len()));
                }
                other => panic!("{alg}: {other:?}"),
            }
        }
    }
    let err = SecretKey::generate(SigAlg::Ed25519)
        .unwrap()
        .public_key()
        .verify(MSG, &[0; 63])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "signature by ed25519: expected 64 bytes, found 63"
    );
}

#[test]
fn hybrid_requires_both_halves() {
    let sk = SecretKey::generate(SigAlg::HybridEd25519MlDsa65).unwrap();
    let other = SecretKey::generate(SigAlg::HybridEd25519MlDsa65).unwrap();
    let pk = sk.public_key();
    let sig = sk.sign(MSG).unwrap();
    let theirs = other.sign(MSG).unwrap();
    // Good Ed25519 half + foreign ML-DSA half, and the other way round.
    let mixed1 = [&sig[..64], &theirs[64..]].concat();
    let mixed2 = [&theirs[..64], &sig[64..]].concat();
    assert!(pk.verify(MSG, &mixed1).is_err());
    assert!(pk.verify(MSG, &mixed2).is_err());
}

#[test]
fn from_raw_validates() {
    for alg in SigAlg::ALL {
        let n = public_key_len(alg);
        for len in [0, n - 1, n + 1] {
            let err = PublicKey::from_raw(alg, &vec![4u8; len]).unwrap_err();
            assert!(
                matches!(err, SignError::PublicKeyLength { expected, found, .. } if expected == n && found == len),
                "{alg} {len}: {err:?}"
            );
        }
    }
    // Ed25519: the identity (small order) and a non-point.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(matches!(
        PublicKey::from_raw(SigAlg::Ed25519, &identity),
        Err(SignError::InvalidPublicKey { .. })
    ));
    let mut not_point = [0xffu8; 32];
    not_point[31] = 0x7f;
    assert!(PublicKey::from_raw(SigAlg::Ed25519, &not_point).is_err());
    // P-384: not on the curve, compressed form, all zero.
    let p = SecretKey::generate(SigAlg::EcdsaP384).unwrap().public_key();
    let mut off_curve = p.raw().to_vec();
    off_curve[96] ^= 1;
    assert!(matches!(
        PublicKey::from_raw(SigAlg::EcdsaP384, &off_curve),
        Err(SignError::InvalidPublicKey { .. })
    ));
    let mut wrong_tag = p.raw().to_vec();
    wrong_tag[0] = 0x02;
    assert!(PublicKey::from_raw(SigAlg::EcdsaP384, &wrong_tag).is_err());
    assert!(PublicKey::from_raw(SigAlg::EcdsaP384, &[0; 97]).is_err());
    // Hybrid: a bad Ed25519 half is refused.
    let h = SecretKey::generate(SigAlg::HybridEd25519MlDsa65)
        .unwrap()
        .public_key();
    let mut bad = h.raw().to_vec();
    bad[..32].copy_from_slice(&identity);
    assert!(PublicKey::from_raw(SigAlg::HybridEd25519MlDsa65, &bad).is_err());
}

#[test]
fn debug_never_shows_secret_material() {
    for alg in SigAlg::ALL {
        let sk = SecretKey::generate(alg).unwrap();
        let dbg = format!("{sk:?} {sk:#?}");
        assert!(dbg.contains(&sk.key_id().to_hex()), "{dbg}");
        let pem = sk.to_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        for chunk in body.as_bytes().chunks(16) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            assert!(!dbg.contains(chunk), "{alg}: Debug leaks PEM text");
        }
        assert!(dbg.len() < 400, "{alg}: Debug is short: {dbg}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn prop_ed25519_any_message_any_flip(msg in proptest::collection::vec(any::<u8>(), 0..200), bit in 0usize..512) {
        let sk = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let pk = sk.public_key();
        let sig = sk.sign(&msg).unwrap();
        prop_assert!(pk.verify(&msg, &sig).is_ok());
        prop_assert!(pk.verify(&msg, &flip(&sig, bit)).is_err());
        if !msg.is_empty() {
            let mbit = bit % (msg.len() * 8);
            prop_assert!(pk.verify(&flip(&msg, mbit), &sig).is_err());
        }
    }

    #[test]
    fn prop_garbage_never_panics(text in ".{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = SecretKey::from_pem(&text);
        let _ = PublicKey::from_pem(&text);
        for alg in SigAlg::ALL {
            let _ = PublicKey::from_raw(alg, &bytes);
        }
        let wrapped = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64_of(&bytes));
        prop_assert!(SecretKey::from_pem(&wrapped).is_err());
    }
}

fn base64_of(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
