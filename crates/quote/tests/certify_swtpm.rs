//! TPM2_Certify evidence from a real (software) TPM, checked by us; the signature is also
//! checked by the openssl oracle.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::{Lab, der_signature};
use vmattest_quote::{
    AttestType, Attested, PublicKey, QuoteError, parse_attest, parse_public_ecc_p256,
    parse_signature, verify_certify, verify_quote,
};

/// The qualifying data tpm2-tools 5.4's `tpm2_certify` always sends (it has no -q option).
const CERTIFY_NONCE: [u8; 4] = [0x00, 0xff, 0x55, 0xaa];

fn openssl_verifies(lab: &Lab, sig: &vmattest_quote::Signature, data: &str) -> bool {
    lab.write("sig.der", &der_signature(&sig.r, &sig.s));
    lab.accepts(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            "ak.pem",
            "-signature",
            "sig.der",
            data,
        ],
    )
}

#[test]
fn certify_verifies_and_names_the_key() {
    let lab = Lab::new();
    lab.make_ak();
    lab.certify();

    let ak = parse_public_ecc_p256(&lab.read("ak.tpmt")).unwrap();
    let key = parse_public_ecc_p256(&lab.read("key.tpmt")).unwrap();
    let key_2b = PublicKey::from_tpm2b_public(&lab.read("key.pub")).unwrap();
    let tool_name = lab.read("key.name");
    assert_eq!(key.name().unwrap(), tool_name.as_slice());
    assert_eq!(key_2b.name().unwrap(), tool_name.as_slice());
    assert!(!key.is_restricted_signing_key());

    // The storage primary: AES-128-CFB symmetric, NULL scheme, decrypt|restricted.
    lab.tool(
        "tpm2_readpublic",
        &[
            "-Q",
            "-c",
            "primary.ctx",
            "-f",
            "tpmt",
            "-o",
            "primary.tpmt",
            "-n",
            "primary.name",
        ],
    );
    let primary = parse_public_ecc_p256(&lab.read("primary.tpmt")).unwrap();
    assert_eq!(primary.name().unwrap(), lab.read("primary.name").as_slice());
    assert!(!primary.is_restricted_signing_key());

    let attest = lab.read("attest.out");
    let sig = parse_signature(&lab.read("sig.out")).unwrap();
    assert!(openssl_verifies(&lab, &sig, "attest.out"));

    let cert = verify_certify(&ak, &attest, &sig, &CERTIFY_NONCE, &tool_name).unwrap();
    assert_eq!(cert.name, tool_name);
    assert_eq!(cert.attest.attest_type(), AttestType::Certify);
    assert_eq!(cert.attest.extra_data, CERTIFY_NONCE);
    assert!(!cert.qualified_name.is_empty());

    // Wrong nonce.
    let err = verify_certify(&ak, &attest, &sig, b"other", &tool_name).unwrap_err();
    assert!(matches!(err, QuoteError::NonceMismatch { .. }), "{err}");
    // Wrong name: the AK's own.
    let err = verify_certify(&ak, &attest, &sig, &CERTIFY_NONCE, ak.name().unwrap()).unwrap_err();
    assert!(matches!(err, QuoteError::NameMismatch { .. }), "{err}");
    // A certification is not a quote.
    let err = verify_quote(&ak, &attest, &sig, &CERTIFY_NONCE, &[(0, [0; 32])]).unwrap_err();
    assert!(
        matches!(
            err,
            QuoteError::WrongType {
                expected: AttestType::Quote,
                ..
            }
        ),
        "{err}"
    );
    // Signed by the certified key rather than the AK: bad signature.
    let err = verify_certify(&key, &attest, &sig, &CERTIFY_NONCE, &tool_name).unwrap_err();
    assert!(matches!(err, QuoteError::BadSignature { .. }), "{err}");

    // Every flipped byte of the attestation: both refuse.
    for i in 0..attest.len() {
        let mut bad = attest.clone();
        bad[i] ^= 0x01;
        let err = verify_certify(&ak, &bad, &sig, &CERTIFY_NONCE, &tool_name).unwrap_err();
        assert!(
            matches!(err, QuoteError::BadSignature { .. }),
            "byte {i}: {err}"
        );
        lab.write("bad.out", &bad);
        assert!(!openssl_verifies(&lab, &sig, "bad.out"), "byte {i}");
    }
}

#[test]
fn quote_is_not_a_certification() {
    let lab = Lab::new();
    lab.make_ak();
    let nonce = "0102030405060708";
    let pcrs = lab.quote(nonce);
    let ak = parse_public_ecc_p256(&lab.read("ak.tpmt")).unwrap();
    let msg = lab.read("quote.msg");
    let sig = parse_signature(&lab.read("quote.sig")).unwrap();
    assert!(openssl_verifies(&lab, &sig, "quote.msg"));
    let err = verify_certify(
        &ak,
        &msg,
        &sig,
        &hex::decode(nonce).unwrap(),
        ak.name().unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            QuoteError::WrongType {
                expected: AttestType::Certify,
                ..
            }
        ),
        "{err}"
    );
    let parsed = parse_attest(&msg).unwrap();
    let Attested::Quote { pcr_select, .. } = &parsed.attested else {
        panic!("not a quote")
    };
    assert_eq!(vmattest_quote::format_selection(pcr_select), "sha256:0,16");
    verify_quote(&ak, &msg, &sig, &hex::decode(nonce).unwrap(), &pcrs).unwrap();
}
