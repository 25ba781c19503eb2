//! Credential protection against a private swtpm: a credential made in software
//! (`vmattest_quote::make_credential`) for this TPM's EK and attestation key is recovered by
//! `TPM2_ActivateCredential`, and refused for another TPM or another key; one made by
//! `tpm2_makecredential` (tpm2-tools, no TPM) is recovered too.
#![cfg(feature = "tpm")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::{Swtpm, SwtpmExt as _, run};
use vmattest_quote::make_credential;

#[test]
fn a_software_credential_is_activated_only_by_its_tpm_and_key() {
    let swtpm = Swtpm::start();
    let other = Swtpm::start();
    let (ek, ak_name) = {
        let mut t = swtpm.open();
        (t.ek_public().unwrap(), t.attestation_key().unwrap().name)
    };
    let secret = [0x5au8; 32];
    let made = make_credential(&ek, &ak_name, &secret).unwrap();
    let got = swtpm
        .open()
        .activate_credential(&made.id_object, &made.encrypted_secret)
        .unwrap();
    assert_eq!(got.as_slice(), secret);

    // Another name (an object that is not this TPM's attestation key): the integrity check fails.
    let mut wrong_name = ak_name.clone();
    wrong_name[5] ^= 1;
    let made = make_credential(&ek, &wrong_name, &secret).unwrap();
    let e = swtpm
        .open()
        .activate_credential(&made.id_object, &made.encrypted_secret)
        .unwrap_err();
    assert!(e.to_string().contains("ActivateCredential"), "{e}");

    // Another TPM cannot recover what was made for this one.
    let made = make_credential(&ek, &ak_name, &secret).unwrap();
    assert!(
        other
            .open()
            .activate_credential(&made.id_object, &made.encrypted_secret)
            .is_err()
    );
    // A damaged blob is refused.
    let mut bad = made.id_object.clone();
    let n = bad.len();
    bad[n - 1] ^= 0x80;
    assert!(
        swtpm
            .open()
            .activate_credential(&bad, &made.encrypted_secret)
            .is_err()
    );
}

#[test]
fn a_credential_made_by_tpm2_tools_is_activated() {
    let swtpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let ak_name = swtpm.open().attestation_key().unwrap().name;
    let tcti = swtpm.tcti();
    let (ok, out) = run(
        "tpm2_createek",
        &[
            "-T",
            &tcti,
            "-c",
            &p("ek.ctx"),
            "-G",
            "ecc",
            "-u",
            &p("ek.pub"),
        ],
    );
    assert!(ok, "{out}");
    let _ = run("tpm2_flushcontext", &["-T", &tcti, "-t"]);
    std::fs::write(p("secret"), [0x33u8; 32]).unwrap();
    let (ok, out) = run(
        "tpm2_makecredential",
        &[
            "-T",
            "none",
            "-u",
            &p("ek.pub"),
            "-s",
            &p("secret"),
            "-n",
            &hex::encode(&ak_name),
            "-o",
            &p("cred"),
        ],
    );
    assert!(ok, "{out}");
    // tpm2-tools' file: magic BADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    let f = std::fs::read(p("cred")).unwrap();
    assert_eq!(f[..4], [0xba, 0xdc, 0xc0, 0xde]);
    let n = usize::from(u16::from_be_bytes([f[8], f[9]]));
    let id_object = &f[10..10 + n];
    let m = usize::from(u16::from_be_bytes([f[10 + n], f[11 + n]]));
    let secret = &f[12 + n..12 + n + m];
    let got = swtpm.open().activate_credential(id_object, secret).unwrap();
    assert_eq!(got.as_slice(), [0x33u8; 32]);
}
