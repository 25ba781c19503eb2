//! Malformed input: real evidence from a software TPM, damaged.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::Lab;
use vmattest_quote::{
    MAX_ATTEST_LEN, ParseError, PublicKey, QuoteError, Signature, parse_attest,
    parse_public_ecc_p256, parse_signature, verify_certify, verify_quote,
};

struct Evidence {
    quote: Vec<u8>,
    quote_sig: Vec<u8>,
    certify: Vec<u8>,
    ak_tpmt: Vec<u8>,
    ak_2b: Vec<u8>,
    pcrs: Vec<(u32, [u8; 32])>,
}

const NONCE: &str = "a1a2a3a4a5a6a7a8";

fn evidence() -> Evidence {
    let lab = Lab::new();
    lab.make_ak();
    let pcrs = lab.quote(NONCE);
    lab.certify();
    Evidence {
        quote: lab.read("quote.msg"),
        quote_sig: lab.read("quote.sig"),
        certify: lab.read("attest.out"),
        ak_tpmt: lab.read("ak.tpmt"),
        ak_2b: lab.read("ak.pub"),
        pcrs,
    }
}

#[test]
fn damaged_evidence_is_refused_without_panic() {
    let ev = evidence();
    let ak = parse_public_ecc_p256(&ev.ak_tpmt).unwrap();
    let sig = parse_signature(&ev.quote_sig).unwrap();
    let nonce = hex::decode(NONCE).unwrap();

    // Every truncation of every structure.
    for blob in [&ev.quote, &ev.certify] {
        parse_attest(blob).unwrap();
        for len in 0..blob.len() {
            let err = parse_attest(&blob[..len]).unwrap_err();
            assert!(
                matches!(err, ParseError::Truncated { .. }),
                "len {len}: {err}"
            );
        }
    }
    for len in 0..ev.quote_sig.len() {
        let err = parse_signature(&ev.quote_sig[..len]).unwrap_err();
        assert!(
            matches!(err, ParseError::Truncated { .. }),
            "len {len}: {err}"
        );
    }
    for len in 0..ev.ak_tpmt.len() {
        let err = parse_public_ecc_p256(&ev.ak_tpmt[..len]).unwrap_err();
        assert!(
            matches!(err, ParseError::Truncated { .. }),
            "len {len}: {err}"
        );
    }
    for len in 0..ev.ak_2b.len() {
        assert!(
            PublicKey::from_tpm2b_public(&ev.ak_2b[..len]).is_err(),
            "len {len}"
        );
    }
    // A truncated but validly signed quote cannot exist; the signature check fails first.
    let err = verify_quote(&ak, &ev.quote[..50], &sig, &nonce, &ev.pcrs).unwrap_err();
    assert!(matches!(err, QuoteError::BadSignature { .. }), "{err}");

    // One trailing byte.
    for blob in [&ev.quote, &ev.certify] {
        let mut long = blob.clone();
        long.push(0);
        let err = parse_attest(&long).unwrap_err();
        assert_eq!(
            err,
            ParseError::Trailing {
                structure: "TPMS_ATTEST",
                offset: blob.len(),
                count: 1
            }
        );
    }
    let mut long = ev.quote_sig.clone();
    long.push(0);
    assert!(matches!(
        parse_signature(&long).unwrap_err(),
        ParseError::Trailing { .. } | ParseError::Oversize { .. }
    ));
    let mut long = ev.ak_tpmt.clone();
    long.push(0);
    assert!(matches!(
        parse_public_ecc_p256(&long).unwrap_err(),
        ParseError::Trailing { .. }
    ));

    // Wrong magic, named.
    let mut bad = ev.quote.clone();
    bad[..4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    assert_eq!(
        parse_attest(&bad).unwrap_err().to_string(),
        "TPMS_ATTEST: magic 0x12345678 at offset 0, expected 0xff544347"
    );

    // Unsupported type, named.
    let mut bad = ev.quote.clone();
    bad[4..6].copy_from_slice(&[0x80, 0x19]);
    let text = parse_attest(&bad).unwrap_err().to_string();
    assert!(text.contains("0x8019 (TPM_ST_ATTEST_TIME)"), "{text}");

    // An oversize TPM2B: extraData claims 0xffff bytes.
    let mut bad = ev.quote.clone();
    let at = 6 + 2 + 34; // magic, type, qualifiedSigner (2 + 34)
    bad[at..at + 2].copy_from_slice(&[0xff, 0xff]);
    let err = parse_attest(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            ParseError::TooLong {
                field: "extraData",
                max: 66,
                found: 0xffff,
                ..
            }
        ),
        "{err}"
    );

    // Oversize input, refused before hashing.
    let huge = vec![0u8; MAX_ATTEST_LEN + 1];
    assert!(matches!(
        parse_attest(&huge).unwrap_err(),
        ParseError::Oversize { .. }
    ));
    let err = verify_quote(&ak, &huge, &sig, &nonce, &ev.pcrs).unwrap_err();
    assert!(
        matches!(err, QuoteError::Malformed(ParseError::Oversize { .. })),
        "{err}"
    );
    let err = verify_certify(&ak, &huge, &sig, &nonce, b"").unwrap_err();
    assert!(
        matches!(err, QuoteError::Malformed(ParseError::Oversize { .. })),
        "{err}"
    );

    // Other signature algorithms refused by name.
    let mut rsa = ev.quote_sig.clone();
    rsa[..2].copy_from_slice(&[0x00, 0x14]);
    let text = parse_signature(&rsa).unwrap_err().to_string();
    assert!(text.contains("TPM_ALG_RSASSA"), "{text}");
    let mut sha1 = ev.quote_sig.clone();
    sha1[2..4].copy_from_slice(&[0x00, 0x04]);
    let text = parse_signature(&sha1).unwrap_err().to_string();
    assert!(text.contains("TPM_ALG_SHA1"), "{text}");

    // Raw r||s: exactly 64 bytes.
    let raw = sig.to_raw();
    assert_eq!(Signature::from_raw(&raw).unwrap(), sig);
    assert!(Signature::from_raw(&raw[..63]).is_err());
    assert!(Signature::from_raw(&[raw.as_slice(), &[0]].concat()).is_err());

    // Short r (left-padded): re-encode r without its leading bytes when they are zero.
    let mut short = vec![0x00, 0x18, 0x00, 0x0b];
    let start = sig.r.iter().position(|&b| b != 0).unwrap();
    short.extend_from_slice(&((32 - start) as u16).to_be_bytes());
    short.extend_from_slice(&sig.r[start..]);
    short.extend_from_slice(&32u16.to_be_bytes());
    short.extend_from_slice(&sig.s);
    assert_eq!(parse_signature(&short).unwrap(), sig);

    // Public keys: other curve, not on the curve, RSA.
    let mut p384 = ev.ak_tpmt.clone();
    p384[16..18].copy_from_slice(&[0x00, 0x04]);
    let text = parse_public_ecc_p256(&p384).unwrap_err().to_string();
    assert!(text.contains("curveID"), "{text}");
    let mut off_curve = ev.ak_tpmt.clone();
    let last = off_curve.len() - 1;
    off_curve[last] ^= 1;
    let text = parse_public_ecc_p256(&off_curve).unwrap_err().to_string();
    assert!(text.contains("a point on NIST P-256"), "{text}");
    let mut rsa_key = ev.ak_tpmt.clone();
    rsa_key[..2].copy_from_slice(&[0x00, 0x01]);
    let text = parse_public_ecc_p256(&rsa_key).unwrap_err().to_string();
    assert!(text.contains("TPM_ALG_RSA"), "{text}");
    assert!(PublicKey::from_spki_pem("not a key").is_err());
    assert!(PublicKey::from_sec1(&[4u8; 65]).is_err());
}
