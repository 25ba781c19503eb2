#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Interoperability of the Ed25519 and P-384 key files and signatures with OpenSSL 3.

use std::path::Path;
use std::process::{Command, Stdio};

use vmattest_sign::keyfile::{read_public_key, read_secret_key, write_secret_key};
use vmattest_sign::{PublicKey, SecretKey, SigAlg, Signer};

const MSG: &[u8] = b"interop message for openssl";

/// Runs openssl with `args`, feeding `stdin`, and returns stdout; panics with stderr on failure.
fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it with scripts/install-deps.sh")
        });
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// DER `ECDSA-Sig-Value` from fixed `r || s`.
fn der_sig(rs: &[u8]) -> Vec<u8> {
    fn int(x: &[u8]) -> Vec<u8> {
        let mut x: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        if x.first().is_none_or(|b| b & 0x80 != 0) {
            x.insert(0, 0);
        }
        [vec![0x02, u8::try_from(x.len()).unwrap()], x].concat()
    }
    let (r, s) = rs.split_at(rs.len() / 2);
    let body = [int(r), int(s)].concat();
    let len = u8::try_from(body.len()).unwrap();
    if len < 0x80 {
        [vec![0x30, len], body].concat()
    } else {
        [vec![0x30, 0x81, len], body].concat()
    }
}

/// Fixed 48-byte `r || s` from a DER `ECDSA-Sig-Value` (as OpenSSL writes it).
fn fixed_sig(der: &[u8]) -> Vec<u8> {
    let mut i = if der[1] == 0x81 { 3 } else { 2 };
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = usize::from(der[i + 1]);
        let v = &der[i + 2..i + 2 + len];
        let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        out.extend(std::iter::repeat_n(0u8, 48 - v.len()));
        out.extend(v);
        i += 2 + len;
    }
    out
}

#[test]
fn openssl_reads_our_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    for alg in [SigAlg::Ed25519, SigAlg::EcdsaP384] {
        let sk = SecretKey::generate(alg).unwrap();
        let path = dir.path().join(format!("{alg}.pem"));
        write_secret_key(&path, &sk).unwrap();
        openssl(&["pkey", "-in", path_str(&path), "-noout"], b"");
        // OpenSSL derives the same public key, byte for byte in SPKI PEM.
        let pubout = openssl(&["pkey", "-in", path_str(&path), "-pubout"], b"");
        assert_eq!(String::from_utf8(pubout).unwrap(), sk.public_key().to_pem());
        // OpenSSL re-encodes our private key to the identical PKCS#8 document.
        let again = openssl(&["pkey", "-in", path_str(&path)], b"");
        assert_eq!(String::from_utf8(again).unwrap(), *sk.to_pem(), "{alg}");
    }
}

#[test]
fn we_read_openssl_ed25519_keys_and_signatures_verify_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ed.pem");
    let pubf = dir.path().join("ed.pub");
    let msg = dir.path().join("msg");
    std::fs::write(&msg, MSG).unwrap();
    openssl(
        &["genpkey", "-algorithm", "ed25519", "-out", path_str(&key)],
        b"",
    );
    openssl(
        &[
            "pkey",
            "-in",
            path_str(&key),
            "-pubout",
            "-out",
            path_str(&pubf),
        ],
        b"",
    );
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let sk = read_secret_key(&key).unwrap();
    assert_eq!(sk.alg(), SigAlg::Ed25519);
    let pk = read_public_key(&pubf).unwrap();
    assert_eq!(pk, sk.public_key());

    // OpenSSL signs, we verify.
    let sig = openssl(
        &[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            path_str(&key),
            "-in",
            path_str(&msg),
        ],
        b"",
    );
    pk.verify(MSG, &sig).unwrap();
    // We sign, OpenSSL verifies.
    let sigf = dir.path().join("sig");
    std::fs::write(&sigf, sk.sign(MSG).unwrap()).unwrap();
    openssl(
        &[
            "pkeyutl",
            "-verify",
            "-rawin",
            "-pubin",
            "-inkey",
            path_str(&pubf),
            "-in",
            path_str(&msg),
            "-sigfile",
            path_str(&sigf),
        ],
        b"",
    );
}

#[test]
fn we_read_openssl_p384_keys_and_signatures_verify_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let sec1 = openssl(&["ecparam", "-name", "secp384r1", "-genkey"], b"");
    let pkcs8 = openssl(&["pkcs8", "-topk8", "-nocrypt"], &sec1);
    let sk = SecretKey::from_pem(std::str::from_utf8(&pkcs8).unwrap()).unwrap();
    assert_eq!(sk.alg(), SigAlg::EcdsaP384);
    let pub_pem = openssl(&["pkey", "-pubout"], &pkcs8);
    let pk = PublicKey::from_pem(std::str::from_utf8(&pub_pem).unwrap()).unwrap();
    assert_eq!(pk, sk.public_key());

    let key = dir.path().join("p384.pem");
    let pubf = dir.path().join("p384.pub");
    let msg = dir.path().join("msg");
    std::fs::write(&key, &pkcs8).unwrap();
    std::fs::write(&pubf, &pub_pem).unwrap();
    std::fs::write(&msg, MSG).unwrap();

    // OpenSSL signs (ECDSA-SHA384, DER), we verify the fixed-size form.
    let der = openssl(
        &["dgst", "-sha384", "-sign", path_str(&key), path_str(&msg)],
        b"",
    );
    pk.verify(MSG, &fixed_sig(&der)).unwrap();
    // We sign, OpenSSL verifies.
    let sigf = dir.path().join("sig.der");
    std::fs::write(&sigf, der_sig(&sk.sign(MSG).unwrap())).unwrap();
    openssl(
        &[
            "dgst",
            "-sha384",
            "-verify",
            path_str(&pubf),
            "-signature",
            path_str(&sigf),
            path_str(&msg),
        ],
        b"",
    );
}

#[test]
fn openssl_sec1_ec_key_gets_a_label_error() {
    // Without `pkcs8 -topk8` OpenSSL writes SEC1 "EC PRIVATE KEY" (after "EC PARAMETERS").
    let sec1 = openssl(&["ecparam", "-name", "secp384r1", "-genkey", "-noout"], b"");
    let err = SecretKey::from_pem(std::str::from_utf8(&sec1).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "PEM text: expected PEM label PRIVATE KEY, found EC PRIVATE KEY"
    );
}
