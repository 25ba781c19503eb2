//! Against a private swtpm per test; oracles: the `p256` and `p384` crates, `vmattest_sign`,
//! `openssl`, `tpm2_checkquote`.
#![cfg(feature = "tpm")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Swtpm, SwtpmExt as _, run};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use p384::ecdsa::signature::hazmat::PrehashVerifier as _;
use p384::pkcs8::EncodePublicKey as _;
use sha2::{Digest as _, Sha256, Sha384};
use vmattest_sign::{PublicKey, SigAlg, SignError, Signer};
use vmattest_tpm::{
    EcdsaP384Signature, EcdsaSignature, KeyPublic, PcrBank, SealedBlob, TpmError, TpmSigner,
    name_of,
};

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn sha384(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

/// The P-384 signing key as a `p384` verifying key.
fn p384_key(key: &KeyPublic) -> p384::ecdsa::VerifyingKey {
    p384::ecdsa::VerifyingKey::from_sec1_bytes(&key.sec1).unwrap()
}

fn p384_sig(sig: &EcdsaP384Signature) -> p384::ecdsa::Signature {
    p384::ecdsa::Signature::from_scalars(sig.r, sig.s).unwrap()
}

/// `TpmSigner::new` over `SwtpmExt::open` (which retries while swtpm closes the last client).
fn open_signer(swtpm: &Swtpm) -> TpmSigner {
    TpmSigner::new(swtpm.open()).unwrap()
}

/// `TpmSigner::open` against `swtpm`, retried like `SwtpmExt::open`.
fn open_signer_by_config(swtpm: &Swtpm) -> TpmSigner {
    let mut last = None;
    for _ in 0..40 {
        match TpmSigner::open(&swtpm.config()) {
            Ok(signer) => return signer,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("cannot open swtpm: {last:?}");
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
    assert_eq!(sk1.sec1.len(), 97, "P-384 signing key");
    assert_eq!(ak1.sec1.len(), 65, "P-256 attestation key");
    for key in [&sk1, &ak1] {
        assert_eq!(key.sec1[0], 0x04);
        assert_eq!(key.name.len(), 34);
        assert_eq!(key.name, name_of(&key.tpmt_public));
    }
    p384_key(&sk1);
    verifying_key(&ak1);
    // TPMT_PUBLIC starts with type ECC (0x0023) and nameAlg SHA-256; the AK is restricted.
    assert_eq!(&sk1.tpmt_public[..4], &[0x00, 0x23, 0x00, 0x0b]);
    assert_eq!(&ak1.tpmt_public[..4], &[0x00, 0x23, 0x00, 0x0b]);
    // After the attributes and an empty authPolicy: symmetric NULL, scheme ECDSA (0x0018) with
    // its hash, the curve, and KDF NULL.
    let params = |k: &KeyPublic| k.tpmt_public[10..20].to_vec();
    assert_eq!(
        params(&sk1),
        [0x00, 0x10, 0x00, 0x18, 0x00, 0x0c, 0x00, 0x04, 0x00, 0x10],
        "ECDSA-SHA384 on NIST P-384"
    );
    assert_eq!(
        params(&ak1),
        [0x00, 0x10, 0x00, 0x18, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x10],
        "ECDSA-SHA256 on NIST P-256"
    );
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
fn sign_digest_verifies_with_p384() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.open();
    let vk = p384_key(&tpm.signing_key().unwrap());
    let digest = sha384(b"a snapshot root");
    let sig = tpm.sign_digest(&digest).unwrap();
    vk.verify_prehash(&digest, &p384_sig(&sig)).unwrap();
    let mut other = digest;
    other[0] ^= 1;
    assert!(vk.verify_prehash(&other, &p384_sig(&sig)).is_err());
}

#[test]
fn tpm_signer_verifies_with_vmattest_sign_and_openssl() {
    let swtpm = Swtpm::start();
    let signer = open_signer(&swtpm);
    let key = signer.tpm_public().clone();
    assert_eq!(signer.alg(), SigAlg::EcdsaP384);
    let public = signer.public_key();
    assert_eq!(public.alg(), SigAlg::EcdsaP384);
    assert_eq!(public.raw(), key.sec1.as_slice());
    assert_eq!(signer.key_id(), public.key_id());

    // A verifier holds only public data: the raw key (or its PEM) and the signature.
    let verifier = PublicKey::from_raw(SigAlg::EcdsaP384, &key.sec1).unwrap();
    let verifier_from_pem = PublicKey::from_pem(&public.to_pem()).unwrap();
    assert_eq!(verifier_from_pem, verifier);
    let message = b"vmattest manifest bytes".repeat(100);
    let raw = signer.sign(&message).unwrap();
    assert_eq!(raw.len(), vmattest_sign::signature_len(SigAlg::EcdsaP384));
    verifier.verify(&message, &raw).unwrap();
    p384_key(&key)
        .verify_prehash(
            &sha384(&message),
            &p384::ecdsa::Signature::from_slice(&raw).unwrap(),
        )
        .unwrap();

    let mut flipped = message.clone();
    flipped[7] ^= 0x01;
    assert!(matches!(
        verifier.verify(&flipped, &raw),
        Err(SignError::BadSignature { .. })
    ));
    let mut bad_sig = raw.clone();
    bad_sig[95] ^= 0x01;
    assert!(verifier.verify(&message, &bad_sig).is_err());

    // openssl, with the SPKI PEM built by `p384` from the SEC1 point and a DER signature.
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("key.pem");
    let sig_der = dir.path().join("sig.der");
    let msg = dir.path().join("msg.bin");
    let bad_msg = dir.path().join("bad.bin");
    let spki_pem = p384_key(&key).to_public_key_pem(LineEnding::LF).unwrap();
    assert_eq!(
        spki_pem,
        public.to_pem(),
        "p384 and vmattest_sign agree on the SPKI"
    );
    std::fs::write(&pem, spki_pem).unwrap();
    let sig = p384::ecdsa::Signature::from_slice(&raw).unwrap();
    std::fs::write(&sig_der, sig.to_der().as_bytes()).unwrap();
    std::fs::write(&msg, &message).unwrap();
    std::fs::write(&bad_msg, &flipped).unwrap();
    let verify = |m: &Path| {
        run(
            "openssl",
            &[
                "dgst",
                "-sha384",
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
        "openssl accepted a signature over a flipped message: {out}"
    );
}

#[test]
fn tpm_signer_key_id_is_stable_across_opens() {
    let swtpm = Swtpm::start();
    let (id1, public1) = {
        let signer = open_signer(&swtpm);
        (signer.key_id(), signer.public_key())
    };
    // The first connection is closed above: swtpm serves one client at a time.
    let signer = open_signer_by_config(&swtpm);
    assert_eq!(signer.key_id(), id1);
    assert_eq!(signer.public_key(), public1);
    assert_eq!(id1, public1.key_id());
    // A signature made through the second connection verifies under the first key.
    let sig = signer.sign(b"link").unwrap();
    public1.verify(b"link", &sig).unwrap();
    // And the plain `Tpm` reports the same key.
    let mut tpm = signer.into_inner();
    assert_eq!(tpm.signing_key().unwrap().sec1, public1.raw());
}

#[test]
fn tpm_signer_is_shared_between_threads() {
    let swtpm = Swtpm::start();
    let signer: Arc<dyn Signer> = Arc::new(open_signer(&swtpm));
    let public = signer.public_key();
    let threads: Vec<_> = (0..4u8)
        .map(|i| {
            let signer = Arc::clone(&signer);
            std::thread::spawn(move || {
                (0..5u8)
                    .map(|j| {
                        let msg = vec![i, j];
                        let sig = signer.sign(&msg).unwrap();
                        (msg, sig)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        for (msg, sig) in t.join().unwrap() {
            public.verify(&msg, &sig).unwrap();
        }
    }
}

#[test]
fn tpm_signer_pads_short_r_and_s() {
    // r or s below 2^376 (a leading zero byte) happens once in 128 signatures on average: in
    // 600 signatures at least one is short with probability above 99%. Every one must still
    // be 96 bytes and verify.
    let swtpm = Swtpm::start();
    let signer = open_signer(&swtpm);
    let public = signer.public_key();
    let mut short = 0;
    for i in 0..600u32 {
        let msg = i.to_be_bytes();
        let sig = signer.sign_message(&msg).unwrap();
        if sig.r[0] == 0 || sig.s[0] == 0 {
            short += 1;
        }
        public.verify(&msg, &sig.to_bytes()).unwrap();
    }
    assert!(short > 0, "no short r or s in 600 signatures");
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
    assert_eq!(
        signing.sec1.len(),
        97,
        "the certified key is the P-384 signing key"
    );
    assert_eq!(name, signing.name);
    assert_eq!(name, name_of(&signing.tpmt_public));

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

    // Through the chain signer: the certified name is that of the key whose public part
    // `Signer::public_key` returns.
    let signer = TpmSigner::new(tpm).unwrap();
    let cert = signer.certify(b"signer nonce").unwrap();
    let parsed = parse_attest(&cert.attest);
    let mut at = 0;
    assert_eq!(tpm2b(parsed.attested, &mut at), signer.tpm_public().name);
    assert_eq!(signer.tpm_public().sec1, signer.public_key().raw());
    vk.verify_prehash(&sha256(&cert.attest), &p256_sig(&cert.signature))
        .unwrap();
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
        tpm.sign_digest(&[7; 48]).unwrap();
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
    tpm.sign_digest(&[7; 48]).unwrap();
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
