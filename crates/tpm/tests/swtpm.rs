//! Against a private swtpm per test; oracles: the `p256` crate, `openssl`, `tpm2_checkquote`.
#![cfg(feature = "tpm")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::Path;

use common::{Swtpm, SwtpmExt as _, run};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use sha2::{Digest as _, Sha256};
use vmattest_tpm::{EcdsaSignature, KeyPublic, PcrBank, SealedBlob, TpmError, TpmSigner, name_of};

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn verifying_key(key: &KeyPublic) -> VerifyingKey {
    VerifyingKey::from_sec1_bytes(&key.sec1).unwrap()
}

fn p256_sig(sig: &EcdsaSignature) -> Signature {
    Signature::from_scalars(sig.r, sig.s).unwrap()
}

fn write_pem(key: &KeyPublic, path: &Path) {
    let pem = verifying_key(key)
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(path, pem).unwrap();
}

/// `TPMT_SIGNATURE` for ECDSA-SHA256: sigAlg, hash, then r and s as `TPM2B_ECC_PARAMETER`s.
fn tpmt_signature(sig: &EcdsaSignature) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0x0018u16.to_be_bytes()); // TPM_ALG_ECDSA
    out.extend_from_slice(&0x000bu16.to_be_bytes()); // TPM_ALG_SHA256
    for part in [&sig.r, &sig.s] {
        out.extend_from_slice(&32u16.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Reads a `TPM2B` (u16 size then bytes) at `*at`.
fn tpm2b<'a>(bytes: &'a [u8], at: &mut usize) -> &'a [u8] {
    let len = usize::from(u16::from_be_bytes([bytes[*at], bytes[*at + 1]]));
    let out = &bytes[*at + 2..*at + 2 + len];
    *at += 2 + len;
    out
}

struct ParsedAttest<'a> {
    kind: u16,
    extra_data: &'a [u8],
    /// The bytes after clockInfo and firmwareVersion: the type-specific part.
    attested: &'a [u8],
}

fn parse_attest(bytes: &[u8]) -> ParsedAttest<'_> {
    assert_eq!(
        &bytes[..4],
        &0xff54_4347u32.to_be_bytes(),
        "TPM_GENERATED_VALUE"
    );
    let kind = u16::from_be_bytes([bytes[4], bytes[5]]);
    let mut at = 6;
    let _qualified_signer = tpm2b(bytes, &mut at);
    let extra_data = tpm2b(bytes, &mut at);
    at += 8 + 4 + 4 + 1; // TPMS_CLOCK_INFO
    at += 8; // firmwareVersion
    ParsedAttest {
        kind,
        extra_data,
        attested: &bytes[at..],
    }
}

#[test]
fn keys_are_deterministic_across_opens() {
    let swtpm = Swtpm::start();
    let (sk1, ak1) = {
        let mut tpm = swtpm.open();
        (tpm.signing_key().unwrap(), tpm.attestation_key().unwrap())
    };
    // swtpm serves one client at a time: the first connection is closed above.
    let mut tpm = swtpm.open();
    let (sk2, ak2) = (tpm.signing_key().unwrap(), tpm.attestation_key().unwrap());
    assert_eq!(sk1, sk2);
    assert_eq!(ak1, ak2);
    assert_ne!(sk1.sec1, ak1.sec1);
    for key in [&sk1, &ak1] {
        assert_eq!(key.sec1.len(), 65);
        assert_eq!(key.sec1[0], 0x04);
        assert_eq!(key.name.len(), 34);
        assert_eq!(key.name, name_of(&key.tpmt_public));
        verifying_key(key);
    }
    // TPMT_PUBLIC starts with type ECC (0x0023) and nameAlg SHA-256; the AK is restricted.
    assert_eq!(&sk1.tpmt_public[..4], &[0x00, 0x23, 0x00, 0x0b]);
    let attrs = |k: &KeyPublic| u32::from_be_bytes(k.tpmt_public[4..8].try_into().unwrap());
    // fixedTPM 1<<1, fixedParent 1<<4, sensitiveDataOrigin 1<<5, userWithAuth 1<<6,
    // restricted 1<<16, sign 1<<18.
    assert_eq!(attrs(&sk1), 0x0004_0072);
    assert_eq!(attrs(&ak1), 0x0005_0072);

    let ek1 = tpm.ek_public().unwrap();
    assert_eq!(ek1, tpm.ek_public().unwrap());
    VerifyingKey::from_sec1_bytes(&ek1).unwrap();

    let info = tpm.info().unwrap();
    assert!(!info.manufacturer.is_empty(), "{info:?}");
    assert!(info.pcr_banks.iter().any(|b| b == "sha256"), "{info:?}");
    assert!(!info.persistent_key_present);
}

#[test]
fn signatures_verify_with_p256_and_openssl() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.open();
    let key = tpm.signing_key().unwrap();
    let vk = verifying_key(&key);

    let digest = sha256(b"a snapshot root");
    let sig = tpm.sign_digest(&digest).unwrap();
    vk.verify_prehash(&digest, &p256_sig(&sig)).unwrap();
    let mut other = digest;
    other[0] ^= 1;
    assert!(vk.verify_prehash(&other, &p256_sig(&sig)).is_err());

    let mut signer = TpmSigner::new(tpm).unwrap();
    assert_eq!(signer.public_key(), &key);
    let message = b"vmattest manifest bytes".repeat(100);
    let raw = signer.sign(&message).unwrap();
    assert_eq!(raw.len(), 64);
    let sig = Signature::from_slice(&raw).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    let sig_der = dir.path().join("sig.der");
    let msg = dir.path().join("msg.bin");
    let bad_msg = dir.path().join("bad.bin");
    write_pem(&key, &pem);
    std::fs::write(&sig_der, sig.to_der().as_bytes()).unwrap();
    std::fs::write(&msg, &message).unwrap();
    std::fs::write(&bad_msg, b"another message").unwrap();
    let verify = |m: &Path| {
        run(
            "openssl",
            &[
                "dgst",
                "-sha256",
                "-verify",
                pem.to_str().unwrap(),
                "-signature",
                sig_der.to_str().unwrap(),
                m.to_str().unwrap(),
            ],
        )
    };
    let (ok, out) = verify(&msg);
    assert!(ok, "openssl refused the signature: {out}");
    assert!(out.contains("Verified OK"), "{out}");
    let (ok, out) = verify(&bad_msg);
    assert!(
        !ok,
        "openssl accepted a signature over another message: {out}"
    );
}

#[test]
fn quote_passes_tpm2_checkquote() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.open();
    tpm.pcr_reset(16).unwrap();
    let root = sha256(b"snapshot root");
    tpm.pcr_extend(16, &root).unwrap();
    let expected16 = sha256(&[[0u8; 32], root].concat());
    assert_eq!(
        tpm.pcr_read(PcrBank::Sha256, &[16]).unwrap(),
        vec![expected16]
    );

    let nonce = sha256(b"verifier nonce");
    let quote = tpm.quote(&[16, 0], &nonce).unwrap();
    assert_eq!(quote.pcrs, vec![0, 16]);
    assert_eq!(quote.pcr_values[1], expected16);
    let parsed = parse_attest(&quote.attest);
    assert_eq!(parsed.kind, 0x8018, "TPM_ST_ATTEST_QUOTE");
    assert_eq!(parsed.extra_data, nonce);

    let ak = tpm.attestation_key().unwrap();
    verifying_key(&ak)
        .verify_prehash(&sha256(&quote.attest), &p256_sig(&quote.signature))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    write_pem(&ak, dir.path().join("ak.pem").as_path());
    std::fs::write(path("quote.msg"), &quote.attest).unwrap();
    std::fs::write(path("quote.sig"), tpmt_signature(&quote.signature)).unwrap();
    // The tpm2_pcrread -o format: the selected values concatenated in ascending PCR order.
    std::fs::write(path("quote.pcrs"), quote.pcr_values.concat()).unwrap();
    let check = |nonce_hex: &str, pcrs_file: &str| {
        run(
            "tpm2_checkquote",
            &[
                "-u",
                &path("ak.pem"),
                "-m",
                &path("quote.msg"),
                "-s",
                &path("quote.sig"),
                "-f",
                pcrs_file,
                "-l",
                "sha256:0,16",
                "-g",
                "sha256",
                "-q",
                nonce_hex,
            ],
        )
    };
    let (ok, out) = check(&hex::encode(nonce), &path("quote.pcrs"));
    assert!(ok, "tpm2_checkquote refused the quote: {out}");

    let (ok, out) = check(&hex::encode(sha256(b"other nonce")), &path("quote.pcrs"));
    assert!(!ok, "tpm2_checkquote accepted another nonce: {out}");

    let mut wrong = quote.pcr_values.clone();
    wrong[1][0] ^= 1;
    std::fs::write(path("wrong.pcrs"), wrong.concat()).unwrap();
    let (ok, out) = check(&hex::encode(nonce), &path("wrong.pcrs"));
    assert!(!ok, "tpm2_checkquote accepted other PCR values: {out}");
}

#[test]
fn certify_names_the_signing_key() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.open();
    let nonce = b"certify nonce".to_vec();
    let cert = tpm.certify(&nonce).unwrap();
    let parsed = parse_attest(&cert.attest);
    assert_eq!(parsed.kind, 0x8017, "TPM_ST_ATTEST_CERTIFY");
    assert_eq!(parsed.extra_data, nonce);
    let mut at = 0;
    let name = tpm2b(parsed.attested, &mut at);
    let signing = tpm.signing_key().unwrap();
    assert_eq!(name, signing.name);

    let ak = tpm.attestation_key().unwrap();
    let vk = verifying_key(&ak);
    vk.verify_prehash(&sha256(&cert.attest), &p256_sig(&cert.signature))
        .unwrap();
    let mut tampered = cert.attest.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(
        vk.verify_prehash(&sha256(&tampered), &p256_sig(&cert.signature))
            .is_err()
    );
}

#[test]
fn seal_unseal_and_pcr_mismatch() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.open();
    tpm.pcr_reset(16).unwrap();
    let secret = b"rollback-protection key 0123456789abcdef".to_vec();
    let blob = tpm.seal(&secret, &[16, 0]).unwrap();
    assert_eq!(blob.pcrs, vec![0, 16]);
    assert_eq!(blob.pcr_values[1], [0u8; 32]);

    let bytes = blob.to_bytes().unwrap();
    assert_eq!(&bytes[..8], b"VMATSEAL");
    let blob = SealedBlob::from_bytes(&bytes).unwrap();
    assert_eq!(tpm.unseal(&blob).unwrap().as_slice(), secret.as_slice());

    tpm.pcr_extend(16, &sha256(b"a later snapshot")).unwrap();
    let err = tpm.unseal(&blob).unwrap_err();
    match &err {
        TpmError::PcrMismatch { pcrs } => assert_eq!(pcrs, &vec![16]),
        other => panic!("expected PcrMismatch, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "unseal refused: PCR 16 differs from its value at seal time"
    );

    // Back to the sealed state: unseal works again.
    tpm.pcr_reset(16).unwrap();
    assert_eq!(tpm.unseal(&blob).unwrap().as_slice(), secret.as_slice());

    // Limits.
    assert!(tpm.seal(&[0u8; 129], &[16]).is_err());
    assert!(tpm.seal(&[0u8; 128], &[16]).is_ok());
    assert!(tpm.seal(b"x", &[24]).is_err());
}

#[test]
fn no_transient_slot_leaks() {
    // swtpm without a resource manager has 3 transient object slots and 3 session slots; a
    // leak in any operation fails within a few rounds.
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.open();
    tpm.pcr_reset(16).unwrap();
    let blob = tpm.seal(b"s", &[16]).unwrap();
    for _ in 0..5 {
        tpm.signing_key().unwrap();
        tpm.attestation_key().unwrap();
        tpm.sign_digest(&[7; 32]).unwrap();
        tpm.certify(b"n").unwrap();
        tpm.quote(&[16], b"q").unwrap();
        tpm.ek_public().unwrap();
        tpm.seal(b"s", &[16]).unwrap();
        tpm.unseal(&blob).unwrap();
        tpm.info().unwrap();
    }
    // Failing operations flush too.
    tpm.pcr_extend(16, &[1; 32]).unwrap();
    for _ in 0..5 {
        assert!(matches!(
            tpm.unseal(&blob),
            Err(TpmError::PcrMismatch { .. })
        ));
    }
    tpm.sign_digest(&[7; 32]).unwrap();
}

#[test]
fn open_without_a_tpm_listening_fails_clearly() {
    // Take a port and release it: nothing listens there afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = vmattest_tpm::TpmConfig::tcti(format!("swtpm:host=127.0.0.1,port={port}"));
    let err = vmattest_tpm::Tpm::open(&config).unwrap_err();
    assert!(matches!(err, TpmError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}
