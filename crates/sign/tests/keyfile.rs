#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Key files: modes, refusals, and one distinct error per kind of bad input.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use vmattest_sign::keyfile::{
    MAX_KEY_FILE_BYTES, read_public_key, read_secret_key, write_public_key, write_secret_key,
};
use vmattest_sign::{SecretKey, SigAlg, SignError, Signer};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn write_with_mode(path: &Path, contents: &[u8], m: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn write_and_read_every_alg() {
    let dir = tempfile::tempdir().unwrap();
    for alg in SigAlg::ALL {
        let sk = SecretKey::generate(alg).unwrap();
        let sk_path = dir.path().join(format!("{alg}.key"));
        let pk_path = dir.path().join(format!("{alg}.pub"));
        write_secret_key(&sk_path, &sk).unwrap();
        write_public_key(&pk_path, &sk.public_key()).unwrap();
        assert_eq!(mode(&sk_path), 0o600, "{alg}");
        assert_eq!(mode(&pk_path) & 0o600, 0o600);
        assert_eq!(fs::read_to_string(&sk_path).unwrap(), *sk.to_pem());

        let back = read_secret_key(&sk_path).unwrap();
        assert_eq!(back.key_id(), sk.key_id());
        let pk = read_public_key(&pk_path).unwrap();
        assert_eq!(pk, sk.public_key());
        pk.verify(b"m", &back.sign(b"m").unwrap()).unwrap();
    }
    // Only the key files remain: no temporary files are left behind.
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn writes_refuse_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let sk = SecretKey::generate(SigAlg::Ed25519).unwrap();
    let path = dir.path().join("k");
    fs::write(&path, "precious").unwrap();
    let err = write_secret_key(&path, &sk).unwrap_err();
    assert!(matches!(err, SignError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    let err = write_public_key(&path, &sk.public_key()).unwrap_err();
    assert!(matches!(err, SignError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));

    // A dangling symlink counts as existing: nothing is created through it.
    let link = dir.path().join("link");
    let target = dir.path().join("target");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = write_secret_key(&link, &sk).unwrap_err();
    assert!(matches!(err, SignError::AlreadyExists { .. }), "{err:?}");
    assert!(!target.exists());

    let err = write_secret_key(&dir.path().join("no/such/dir/k"), &sk).unwrap_err();
    assert!(matches!(err, SignError::Io { .. }), "{err:?}");
}

#[test]
fn group_or_world_access_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sk = SecretKey::generate(SigAlg::EcdsaP384).unwrap();
    let path = dir.path().join("k");
    write_secret_key(&path, &sk).unwrap();
    for m in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o610] {
        fs::set_permissions(&path, fs::Permissions::from_mode(m)).unwrap();
        let err = read_secret_key(&path).unwrap_err();
        match &err {
            SignError::InsecureMode { mode, .. } => assert_eq!(*mode, m),
            other => panic!("{m:o}: {other:?}"),
        }
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let msg = read_secret_key(&path).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "key file {}: mode 0644 lets group or others access a private key; expected 0600",
            path.display()
        )
    );
    // 0400 is fine; a public key file may be world-readable.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    read_secret_key(&path).unwrap();
    let pub_path = dir.path().join("k.pub");
    write_with_mode(&pub_path, sk.public_key().to_pem().as_bytes(), 0o644);
    read_public_key(&pub_path).unwrap();
}

#[test]
fn each_bad_input_is_a_distinct_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sk = SecretKey::generate(SigAlg::Ed25519).unwrap();

    // A directory.
    let err = read_secret_key(d).unwrap_err();
    assert!(
        matches!(
            err,
            SignError::NotAFile {
                found: "a directory",
                ..
            }
        ),
        "{err:?}"
    );
    let err = read_public_key(d).unwrap_err();
    assert!(matches!(err, SignError::NotAFile { .. }), "{err:?}");

    // A missing file.
    let missing = d.join("missing");
    let err = read_secret_key(&missing).unwrap_err();
    assert!(matches!(err, SignError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("key file {}: not found", missing.display())
    );

    // Garbage text and binary garbage.
    let garbage = d.join("garbage");
    write_with_mode(&garbage, b"hello, I am not a key\n", 0o600);
    let err = read_secret_key(&garbage).unwrap_err();
    assert!(matches!(err, SignError::NotPem { .. }), "{err:?}");
    let binary = d.join("binary");
    write_with_mode(&binary, &[0xff, 0xfe, 0, 1, 2], 0o600);
    let err = read_secret_key(&binary).unwrap_err();
    assert!(matches!(err, SignError::NotPem { .. }), "{err:?}");
    let empty = d.join("empty");
    write_with_mode(&empty, b"", 0o600);
    let err = read_public_key(&empty).unwrap_err();
    assert!(matches!(err, SignError::NotPem { .. }), "{err:?}");

    // A malformed PEM body.
    let bad_b64 = d.join("bad-b64");
    write_with_mode(
        &bad_b64,
        b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        0o600,
    );
    let err = read_secret_key(&bad_b64).unwrap_err();
    assert!(matches!(err, SignError::MalformedPem { .. }), "{err:?}");

    // Good PEM, bad DER.
    let bad_der = d.join("bad-der");
    write_with_mode(
        &bad_der,
        b"-----BEGIN PRIVATE KEY-----\nAAECAwQ=\n-----END PRIVATE KEY-----\n",
        0o600,
    );
    let err = read_secret_key(&bad_der).unwrap_err();
    assert!(matches!(err, SignError::MalformedDer { .. }), "{err:?}");

    // A PKCS#8 key with an unknown OID (1.3.101.113, Ed448).
    let ed448 = d.join("ed448");
    write_with_mode(
        &ed448,
        b"-----BEGIN PRIVATE KEY-----\n\
MEcCAQAwBQYDK2VxBDsEOQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n-----END PRIVATE KEY-----\n",
        0o600,
    );
    let err = read_secret_key(&ed448).unwrap_err();
    match &err {
        SignError::UnknownAlgorithm { oid, .. } => assert_eq!(oid, "1.3.101.113"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "key file {}: unknown key algorithm OID 1.3.101.113",
            ed448.display()
        )
    );

    // A public key where a secret key is expected, and vice versa.
    let pub_path = d.join("k.pub");
    write_public_key(&pub_path, &sk.public_key()).unwrap();
    fs::set_permissions(&pub_path, fs::Permissions::from_mode(0o600)).unwrap();
    let err = read_secret_key(&pub_path).unwrap_err();
    assert!(matches!(err, SignError::WrongKeyType { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "key file {}: expected a private key (PEM label PRIVATE KEY), found a public key (PEM label PUBLIC KEY)",
            pub_path.display()
        )
    );
    let sk_path = d.join("k");
    write_secret_key(&sk_path, &sk).unwrap();
    let err = read_public_key(&sk_path).unwrap_err();
    assert!(matches!(err, SignError::WrongKeyType { .. }), "{err:?}");
    assert!(err.to_string().contains("expected a public key"), "{err}");

    // Another PEM label.
    let cert = d.join("cert");
    write_with_mode(
        &cert,
        b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n",
        0o600,
    );
    let err = read_secret_key(&cert).unwrap_err();
    assert!(
        matches!(&err, SignError::UnsupportedPemLabel { found, .. } if found == "CERTIFICATE"),
        "{err:?}"
    );

    // An oversize file, refused unread (even if it would otherwise be a fine key).
    let big = d.join("big");
    let mut text = sk.to_pem().to_string();
    text.push_str(&" ".repeat(usize::try_from(MAX_KEY_FILE_BYTES).unwrap()));
    write_with_mode(&big, text.as_bytes(), 0o600);
    let err = read_secret_key(&big).unwrap_err();
    assert!(
        matches!(
            err,
            SignError::TooLarge {
                limit: MAX_KEY_FILE_BYTES,
                ..
            }
        ),
        "{err:?}"
    );
    let err = read_public_key(&big).unwrap_err();
    assert!(matches!(err, SignError::TooLarge { .. }), "{err:?}");
    // Exactly at the limit is fine.
    let at_limit = d.join("at-limit");
    let mut text = sk.to_pem().to_string();
    let pad = usize::try_from(MAX_KEY_FILE_BYTES).unwrap() - text.len();
    text.push_str(&"\n".repeat(pad));
    write_with_mode(&at_limit, text.as_bytes(), 0o600);
    read_secret_key(&at_limit).unwrap();
}

#[test]
fn hybrid_files_need_both_blocks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ed = SecretKey::generate(SigAlg::Ed25519).unwrap();
    let ml = SecretKey::generate(SigAlg::MlDsa65).unwrap();
    let p384 = SecretKey::generate(SigAlg::EcdsaP384).unwrap();

    let swapped = dir.path().join("swapped");
    write_with_mode(
        &swapped,
        format!("{}{}", *ml.to_pem(), *ed.to_pem()).as_bytes(),
        0o600,
    );
    let err = read_secret_key(&swapped).unwrap_err();
    assert!(matches!(err, SignError::BlockLayout { .. }), "{err:?}");
    assert!(
        err.to_string().contains("found ml-dsa-65 then ed25519"),
        "{err}"
    );

    let three = dir.path().join("three");
    let text = format!("{}{}{}", *ed.to_pem(), *ml.to_pem(), *p384.to_pem());
    write_with_mode(&three, text.as_bytes(), 0o600);
    let err = read_secret_key(&three).unwrap_err();
    assert!(err.to_string().contains("found 3 PEM blocks"), "{err}");

    // Two separately generated components form a valid hybrid key.
    let joined = dir.path().join("joined");
    write_with_mode(
        &joined,
        format!("{}{}", *ed.to_pem(), *ml.to_pem()).as_bytes(),
        0o600,
    );
    let hybrid = read_secret_key(&joined).unwrap();
    assert_eq!(hybrid.alg(), SigAlg::HybridEd25519MlDsa65);
    let raw = hybrid.public_key().raw().to_vec();
    assert_eq!(&raw[..32], ed.public_key().raw());
    assert_eq!(&raw[32..], ml.public_key().raw());

    let pub_swapped = format!("{}{}", ml.public_key().to_pem(), ed.public_key().to_pem());
    let err = vmattest_sign::PublicKey::from_pem(&pub_swapped).unwrap_err();
    assert!(matches!(err, SignError::BlockLayout { .. }), "{err:?}");
}
