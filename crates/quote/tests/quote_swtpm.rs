//! Quotes made by a real (software) TPM with tpm2-tools, checked by us and by the
//! `tpm2_checkquote` oracle; both must agree.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::Lab;
use vmattest_quote::{
    AttestType, Attested, PublicKey, QuoteError, parse_attest, parse_public_ecc_p256,
    parse_signature, verify_quote,
};

const NONCE: &str = "6e6f6e63652d31323334353637383930abcdef01";
const OTHER_NONCE: &str = "6e6f6e63652d31323334353637383930abcdef02";

fn nonce() -> Vec<u8> {
    hex::decode(NONCE).unwrap()
}

#[test]
fn quote_agrees_with_checkquote() {
    let lab = Lab::new();
    lab.make_ak();
    let pcrs = lab.quote(NONCE);

    let ak = parse_public_ecc_p256(&lab.read("ak.tpmt")).unwrap();
    let ak_pem = PublicKey::from_spki_pem(&String::from_utf8(lab.read("ak.pem")).unwrap()).unwrap();
    let ak_2b = PublicKey::from_tpm2b_public(&lab.read("ak.pub")).unwrap();
    assert_eq!(ak.to_sec1_uncompressed(), ak_pem.to_sec1_uncompressed());
    assert_eq!(ak, ak_2b);
    assert_eq!(ak.name().unwrap(), lab.read("ak.name").as_slice());
    assert!(ak.is_restricted_signing_key());
    assert_eq!(ak_pem.name(), None);
    let sec1 = PublicKey::from_sec1(&ak.to_sec1_uncompressed()).unwrap();
    assert_eq!(sec1.to_sec1_uncompressed(), ak.to_sec1_uncompressed());

    let msg = lab.read("quote.msg");
    let sig = parse_signature(&lab.read("quote.sig")).unwrap();

    // Original: both accept, with either form of the key.
    assert!(lab.checkquote("quote.msg", "quote.sig", "quote.pcrs", NONCE));
    let quote = verify_quote(&ak, &msg, &sig, &nonce(), &pcrs).unwrap();
    verify_quote(&ak_pem, &msg, &sig, &nonce(), &pcrs).unwrap();
    // PCR order given by the caller does not matter.
    let reversed: Vec<_> = pcrs.iter().rev().copied().collect();
    verify_quote(&ak, &msg, &sig, &nonce(), &reversed).unwrap();
    assert_eq!(quote.pcr_indices, vec![0, 16]);
    assert_eq!(quote.attest.extra_data, nonce());
    assert_eq!(quote.attest.attest_type(), AttestType::Quote);
    assert_eq!(quote.attest.qualified_signer.len(), 34);
    let Attested::Quote { pcr_digest, .. } = &quote.attest.attested else {
        panic!("not a quote")
    };
    assert_eq!(pcr_digest.as_slice(), quote.pcr_digest.as_slice());
    // The raw r||s constructor gives the same result.
    let raw = vmattest_quote::Signature::from_raw(&sig.to_raw()).unwrap();
    verify_quote(&ak, &msg, &raw, &nonce(), &pcrs).unwrap();

    // Altered nonce: both refuse.
    assert!(!lab.checkquote("quote.msg", "quote.sig", "quote.pcrs", OTHER_NONCE));
    let err = verify_quote(&ak, &msg, &sig, &hex::decode(OTHER_NONCE).unwrap(), &pcrs).unwrap_err();
    assert!(matches!(err, QuoteError::NonceMismatch { .. }), "{err}");
    let err = verify_quote(&ak, &msg, &sig, &nonce()[..19], &pcrs).unwrap_err();
    assert!(matches!(err, QuoteError::NonceMismatch { .. }), "{err}");

    // Wrong PCR value: we name the PCRs; the oracle refuses a PCR file with that value.
    let mut wrong = pcrs.clone();
    wrong[1].1[31] ^= 1;
    let err = verify_quote(&ak, &msg, &sig, &nonce(), &wrong).unwrap_err();
    assert!(matches!(err, QuoteError::PcrDigestMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(text.starts_with("PCR digest of sha256:0,16 is "), "{text}");
    assert!(
        text.contains(&format!("the quote says {}", hex::encode(pcr_digest))),
        "{text}"
    );
    let mut pcr_file = lab.read("quote.pcrs");
    let at = pcr_file
        .windows(32)
        .position(|w| w == pcrs[1].1)
        .expect("PCR 16 value inside quote.pcrs");
    pcr_file[at + 31] ^= 1;
    lab.write("wrong.pcrs", &pcr_file);
    assert!(!lab.checkquote("quote.msg", "quote.sig", "wrong.pcrs", NONCE));

    // Different PCR selection than quoted.
    for selection in [vec![pcrs[0]], vec![pcrs[0], pcrs[1], (23, [0u8; 32])]] {
        let err = verify_quote(&ak, &msg, &sig, &nonce(), &selection).unwrap_err();
        assert!(
            matches!(err, QuoteError::PcrSelectionMismatch { .. }),
            "{err}"
        );
    }
    let err = verify_quote(&ak, &msg, &sig, &nonce(), &[]).unwrap_err();
    assert!(matches!(err, QuoteError::InvalidPcrList(_)), "{err}");
    let err = verify_quote(&ak, &msg, &sig, &nonce(), &[pcrs[0], pcrs[0]]).unwrap_err();
    assert!(matches!(err, QuoteError::InvalidPcrList(_)), "{err}");
}

#[test]
fn flipped_message_bytes_refused_by_both() {
    let lab = Lab::new();
    lab.make_ak();
    let pcrs = lab.quote(NONCE);
    let ak = parse_public_ecc_p256(&lab.read("ak.tpmt")).unwrap();
    let msg = lab.read("quote.msg");
    let sig = parse_signature(&lab.read("quote.sig")).unwrap();
    for i in 0..msg.len() {
        let mut bad = msg.clone();
        bad[i] ^= 0x01;
        let err = verify_quote(&ak, &bad, &sig, &nonce(), &pcrs).unwrap_err();
        assert!(
            matches!(err, QuoteError::BadSignature { .. }),
            "byte {i}: {err}"
        );
        lab.write("bad.msg", &bad);
        assert!(
            !lab.checkquote("bad.msg", "quote.sig", "quote.pcrs", NONCE),
            "oracle accepted a message with byte {i} flipped"
        );
    }
}

#[test]
fn flipped_signature_bytes_refused_by_both() {
    let lab = Lab::new();
    lab.make_ak();
    let pcrs = lab.quote(NONCE);
    let ak = parse_public_ecc_p256(&lab.read("ak.tpmt")).unwrap();
    let msg = lab.read("quote.msg");
    let sig_bytes = lab.read("quote.sig");
    for i in 0..sig_bytes.len() {
        let mut bad = sig_bytes.clone();
        bad[i] ^= 0x01;
        let ours = parse_signature(&bad)
            .map_err(QuoteError::from)
            .and_then(|sig| verify_quote(&ak, &msg, &sig, &nonce(), &pcrs));
        match ours {
            Err(QuoteError::BadSignature { .. } | QuoteError::Malformed(_)) => {}
            other => panic!("byte {i}: {other:?}"),
        }
        lab.write("bad.sig", &bad);
        assert!(
            !lab.checkquote("quote.msg", "bad.sig", "quote.pcrs", NONCE),
            "oracle accepted a signature with byte {i} flipped"
        );
    }
    // Flips inside r and s are signature failures, not parse failures.
    for i in [6, 20, 37, 40, 55, 71] {
        let mut bad = sig_bytes.clone();
        bad[i] ^= 0x80;
        let sig = parse_signature(&bad).unwrap();
        let err = verify_quote(&ak, &msg, &sig, &nonce(), &pcrs).unwrap_err();
        assert!(
            matches!(err, QuoteError::BadSignature { .. }),
            "byte {i}: {err}"
        );
    }
}

#[test]
fn quote_from_another_ak_is_a_bad_signature() {
    let lab = Lab::new();
    lab.make_ak();
    let pcrs = lab.quote(NONCE);
    let first_ak = lab.read("ak.tpmt");
    // A second AK under the same primary.
    lab.make_ak();
    let second_ak = parse_public_ecc_p256(&lab.read("ak.tpmt")).unwrap();
    assert_ne!(first_ak, lab.read("ak.tpmt"));
    let msg = lab.read("quote.msg");
    let sig = parse_signature(&lab.read("quote.sig")).unwrap();
    let err = verify_quote(&second_ak, &msg, &sig, &nonce(), &pcrs).unwrap_err();
    assert!(matches!(err, QuoteError::BadSignature { .. }), "{err}");
    assert!(!lab.checkquote("quote.msg", "quote.sig", "quote.pcrs", NONCE));
    let parsed = parse_attest(&msg).unwrap();
    assert_eq!(parsed.extra_data, nonce());
}
