//! TPM-free tests: evidence built and signed here with a fixed P-256 key, for the cases a
//! real TPM will not produce on request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature as P256Signature, SigningKey};
use sha2::{Digest, Sha256};
use vmattest_quote::{
    ParseError, PublicKey, QuoteError, Signature, parse_attest, verify_certify, verify_quote,
};

fn key() -> SigningKey {
    SigningKey::from_slice(&[7u8; 32]).unwrap()
}

fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from_sec1(key.verifying_key().to_encoded_point(false).as_bytes()).unwrap()
}

fn sign(key: &SigningKey, msg: &[u8]) -> Signature {
    let sig: P256Signature = key.sign_prehash(&Sha256::digest(msg)).unwrap();
    Signature::from_raw(&sig.to_bytes()).unwrap()
}

fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn header(out: &mut Vec<u8>, tag: u16, nonce: &[u8], safe: u8) {
    out.extend_from_slice(&0xff54_4347u32.to_be_bytes());
    out.extend_from_slice(&tag.to_be_bytes());
    tpm2b(out, &[0x00, 0x0b, 0xaa, 0xbb]);
    tpm2b(out, nonce);
    out.extend_from_slice(&1234u64.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&2u32.to_be_bytes());
    out.push(safe);
    out.extend_from_slice(&99u64.to_be_bytes());
}

/// A quote over `banks` = [(hash alg, select bytes)] with the given digest.
fn quote_bytes(nonce: &[u8], banks: &[(u16, &[u8])], digest: &[u8], safe: u8) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, 0x8018, nonce, safe);
    out.extend_from_slice(&(banks.len() as u32).to_be_bytes());
    for (hash, select) in banks {
        out.extend_from_slice(&hash.to_be_bytes());
        out.push(select.len() as u8);
        out.extend_from_slice(select);
    }
    tpm2b(&mut out, digest);
    out
}

fn pcrs() -> Vec<(u32, [u8; 32])> {
    vec![(0, [0u8; 32]), (16, [0x42u8; 32])]
}

fn digest_of(pcrs: &[(u32, [u8; 32])]) -> Vec<u8> {
    let mut h = Sha256::new();
    for (_, v) in pcrs {
        h.update(v);
    }
    h.finalize().to_vec()
}

#[test]
fn synthetic_quote_round_trip_and_selection_rules() {
    let sk = key();
    let ak = public(&sk);
    let nonce = b"fresh nonce";
    let digest = digest_of(&pcrs());
    let sel: &[u8] = &[0x01, 0x00, 0x01];

    let msg = quote_bytes(nonce, &[(0x000b, sel)], &digest, 1);
    let quote = verify_quote(&ak, &msg, &sign(&sk, &msg), nonce, &pcrs()).unwrap();
    assert!(quote.attest.clock_info.safe);
    assert_eq!(quote.attest.clock_info.clock, 1234);
    assert_eq!(quote.attest.firmware_version, 99);

    // A zero-padded, longer bitmap selects the same PCRs.
    let msg = quote_bytes(nonce, &[(0x000b, &[0x01, 0x00, 0x01, 0x00])], &digest, 0);
    verify_quote(&ak, &msg, &sign(&sk, &msg), nonce, &pcrs()).unwrap();

    // An extra (even empty) bank, another bank, or no bank: selection mismatch.
    for banks in [
        vec![(0x000b, sel), (0x0004, &[0u8, 0, 0][..])],
        vec![(0x0004, sel)],
        vec![],
    ] {
        let msg = quote_bytes(nonce, &banks, &digest, 0);
        let err = verify_quote(&ak, &msg, &sign(&sk, &msg), nonce, &pcrs()).unwrap_err();
        assert!(
            matches!(err, QuoteError::PcrSelectionMismatch { .. }),
            "{err}"
        );
    }
    let msg = quote_bytes(nonce, &[(0x0004, sel)], &digest, 0);
    let err = verify_quote(&ak, &msg, &sign(&sk, &msg), nonce, &pcrs()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PCR selection mismatch: expected sha256:0,16, the quote selects sha1:0,16"
    );

    // clockInfo.safe must be a TPMI_YES_NO.
    let msg = quote_bytes(nonce, &[(0x000b, sel)], &digest, 2);
    let err = verify_quote(&ak, &msg, &sign(&sk, &msg), nonce, &pcrs()).unwrap_err();
    assert!(
        matches!(err, QuoteError::Malformed(ParseError::BadValue { .. })),
        "{err}"
    );

    // Unsupported attestation type, validly signed: wrong type, named.
    let mut msg = Vec::new();
    header(&mut msg, 0x8019, nonce, 0);
    let err = verify_quote(&ak, &msg, &sign(&sk, &msg), nonce, &pcrs()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "wrong attestation type: expected TPM_ST_ATTEST_QUOTE (0x8018), found TPM_ST_ATTEST_TIME (0x8019)"
    );
    assert!(parse_attest(&msg).is_err());

    // PCR indices beyond the supported selection size.
    let err = verify_quote(&ak, &msg, &sign(&sk, &msg), nonce, &[(64, [0; 32])]).unwrap_err();
    assert!(matches!(err, QuoteError::InvalidPcrList(_)), "{err}");
}

#[test]
fn high_s_signatures_are_accepted() {
    // TPMs do not normalise s; both (r, s) and (r, n - s) are valid ECDSA signatures.
    let sk = key();
    let ak = public(&sk);
    let nonce = b"n";
    let msg = quote_bytes(
        nonce,
        &[(0x000b, &[0x01, 0x00, 0x01])],
        &digest_of(&pcrs()),
        0,
    );
    let sig: P256Signature = sk.sign_prehash(&Sha256::digest(&msg)).unwrap();
    let (r, s) = sig.split_scalars();
    let flipped = P256Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    for sig in [sig, flipped] {
        let sig = Signature::from_raw(&sig.to_bytes()).unwrap();
        verify_quote(&ak, &msg, &sig, nonce, &pcrs()).unwrap();
    }
}

#[test]
fn synthetic_certify() {
    let sk = key();
    let ak = public(&sk);
    let name = [0x00, 0x0b, 1, 2, 3];
    let mut msg = Vec::new();
    header(&mut msg, 0x8017, b"", 1);
    tpm2b(&mut msg, &name);
    tpm2b(&mut msg, &[0x00, 0x0b, 9, 9]);
    let cert = verify_certify(&ak, &msg, &sign(&sk, &msg), b"", &name).unwrap();
    assert_eq!(cert.qualified_name, vec![0x00, 0x0b, 9, 9]);
    let err = verify_certify(&ak, &msg, &sign(&sk, &msg), b"", &name[..4]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "certified name mismatch: expected 000b0102, the attestation names 000b010203"
    );
}

#[test]
fn evidence_that_fails_its_checks_is_verification_and_malformed_evidence_is_input() {
    use vmattest_core::class::{Classify, ErrorClass};

    let sk = key();
    let ak = public(&sk);
    let nonce = b"fresh nonce";
    let sel: &[u8] = &[0x01, 0x00, 0x01];
    let msg = quote_bytes(nonce, &[(0x000b, sel)], &digest_of(&pcrs()), 1);
    let sig = sign(&sk, &msg);
    let check = |msg: &[u8], sig: &Signature, nonce: &[u8], pcrs: &[(u32, [u8; 32])]| {
        verify_quote(&ak, msg, sig, nonce, pcrs).unwrap_err()
    };

    let mut other = msg.clone();
    *other.last_mut().unwrap() ^= 1;
    let e = check(&other, &sig, nonce, &pcrs());
    assert!(matches!(e, QuoteError::BadSignature { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Verification);

    let e = check(&msg, &sig, b"stale nonce", &pcrs());
    assert!(matches!(e, QuoteError::NonceMismatch { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Verification);

    let e = check(&msg, &sig, nonce, &[(0, [0; 32]), (16, [0x43; 32])]);
    assert!(matches!(e, QuoteError::PcrDigestMismatch { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Verification);

    let cut = &msg[..msg.len() - 5];
    let e = check(cut, &sign(&sk, cut), nonce, &pcrs());
    assert!(
        matches!(e, QuoteError::Malformed(ParseError::Truncated { .. })),
        "{e}"
    );
    assert_eq!(e.class(), ErrorClass::Input);

    let mut time = Vec::new();
    header(&mut time, 0x8019, nonce, 0);
    let e = check(&time, &sign(&sk, &time), nonce, &pcrs());
    assert!(matches!(e, QuoteError::WrongType { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Input);
}
