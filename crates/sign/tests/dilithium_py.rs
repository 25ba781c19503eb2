#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! ML-DSA-65 cross-checked against an independent implementation, the pure-Python
//! dilithium-py 1.4.0, installed by scripts/install-deps.sh into
//! `${VMATTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmattest}/venv`.
//!
//! A missing venv is a test failure, not a skip.

use std::io::Write as _;
use std::process::{Command, Stdio};

use vmattest_sign::{PublicKey, SecretKey, SigAlg, Signer, hybrid};

/// Commands read hex lines on stdin and print hex or `1`/`0` lines.
const ORACLE: &str = r#"
import base64, sys
from dilithium_py.ml_dsa import ML_DSA_65 as M

lines = sys.stdin.read().splitlines()
cmd = sys.argv[1]
if cmd == "verify":
    # Groups of 4 lines: pk, msg, sig, ctx. One 1/0 line per group.
    for i in range(0, len(lines), 4):
        pk, msg, sig, ctx = (bytes.fromhex(x) for x in lines[i:i + 4])
        print("1" if M.verify(pk, msg, sig, ctx=ctx) else "0")
elif cmd == "sign":
    # One message per line; a fresh key pair for each. Prints pk and sig per message.
    for line in lines:
        pk, sk = M.keygen()
        print(pk.hex())
        print(M.sign(sk, bytes.fromhex(line)).hex())
elif cmd == "derive":
    # Line 1: our private PEM; line 2: our public PEM (newlines as '|').
    def der(pem):
        body = [l for l in pem.split("|") if l and not l.startswith("-----")]
        return base64.b64decode("".join(body))
    sk_der, pk_der = der(lines[0]), der(lines[1])
    prefix = bytes.fromhex("3034020100300b060960864801650304031204228020")
    assert sk_der[:22] == prefix and len(sk_der) == 54, sk_der.hex()
    spki_prefix = bytes.fromhex("308207b2300b0609608648016503040312038207a100")
    assert pk_der[:22] == spki_prefix and len(pk_der) == 22 + 1952, pk_der[:22].hex()
    pk, _ = M.key_derive(sk_der[22:])
    print(pk.hex())
    print(pk_der[22:].hex())
else:
    sys.exit("unknown command " + cmd)
"#;

fn oracle(cmd: &str, input: &str) -> Vec<String> {
    let python = vmattest_testkit::oracle_python();
    let mut child = Command::new(&python)
        .args(["-c", ORACLE, cmd])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run scripts/install-deps.sh",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dilithium-py oracle `{cmd}` failed{}: {stderr}",
        if stderr.contains("ModuleNotFoundError") {
            " (dilithium-py is not installed; run scripts/install-deps.sh)"
        } else {
            ""
        }
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `(pk, msg, sig, ctx)` for ML_DSA_65.verify.
type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8]);

/// Asks dilithium-py to verify each case.
fn py_verify(cases: &[Case<'_>]) -> Vec<bool> {
    let mut input = String::new();
    for (pk, msg, sig, ctx) in cases {
        for field in [pk, msg, sig, ctx] {
            input.push_str(&hex::encode(field));
            input.push('\n');
        }
    }
    let out = oracle("verify", &input);
    assert_eq!(out.len(), cases.len(), "{out:?}");
    out.iter().map(|l| l == "1").collect()
}

fn messages() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        b"vmattest".to_vec(),
        (0..=255u8).cycle().take(1500).collect(),
    ]
}

#[test]
fn dilithium_py_verifies_our_signatures() {
    let sk = SecretKey::generate(SigAlg::MlDsa65).unwrap();
    let pk = sk.public_key();
    let msgs = messages();
    let sigs: Vec<Vec<u8>> = msgs.iter().map(|m| sk.sign(m).unwrap()).collect();
    let mut cases: Vec<Case<'_>> = Vec::new();
    for (m, s) in msgs.iter().zip(&sigs) {
        cases.push((pk.raw(), m, s, b""));
    }
    // Negative controls: a non-empty context, and a different message.
    cases.push((pk.raw(), &msgs[1], &sigs[1], b"ctx"));
    cases.push((pk.raw(), &msgs[2], &sigs[1], b""));
    assert_eq!(py_verify(&cases), [true, true, true, false, false]);
}

#[test]
fn we_verify_dilithium_py_signatures() {
    let msgs = messages();
    let input: String = msgs.iter().map(|m| hex::encode(m) + "\n").collect();
    let out = oracle("sign", &input);
    assert_eq!(out.len(), 2 * msgs.len(), "{out:?}");
    for (i, m) in msgs.iter().enumerate() {
        let pk_raw = hex::decode(&out[2 * i]).unwrap();
        let sig = hex::decode(&out[2 * i + 1]).unwrap();
        let pk = PublicKey::from_raw(SigAlg::MlDsa65, &pk_raw).unwrap();
        pk.verify(m, &sig)
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert!(pk.verify(b"another message", &sig).is_err());
    }
}

#[test]
fn our_seed_form_key_derives_the_same_public_key_in_dilithium_py() {
    let sk = SecretKey::generate(SigAlg::MlDsa65).unwrap();
    let input = format!(
        "{}\n{}\n",
        sk.to_pem().replace('\n', "|"),
        sk.public_key().to_pem().replace('\n', "|")
    );
    let out = oracle("derive", &input);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0],
        hex::encode(sk.public_key().raw()),
        "derived from seed"
    );
    assert_eq!(out[1], hex::encode(sk.public_key().raw()), "in our SPKI");
}

#[test]
fn dilithium_py_verifies_the_hybrid_ml_dsa_half_over_the_domain_message() {
    let sk = SecretKey::generate(SigAlg::HybridEd25519MlDsa65).unwrap();
    let pk = sk.public_key();
    let msg = b"hybrid message";
    let sig = sk.sign(msg).unwrap();
    let (ed_pk, ml_pk) = pk.raw().split_at(32);
    let (ed_sig, ml_sig) = sig.split_at(64);
    let m_prime = [hybrid::DOMAIN, msg].concat();
    assert_eq!(hybrid::DOMAIN, b"vmattest hybrid v1\0");
    let cases: Vec<Case<'_>> = vec![(ml_pk, &m_prime, ml_sig, b""), (ml_pk, msg, ml_sig, b"")];
    assert_eq!(py_verify(&cases), [true, false]);
    // The Ed25519 half is a plain Ed25519 signature over the same M'.
    let ed = PublicKey::from_raw(SigAlg::Ed25519, ed_pk).unwrap();
    ed.verify(&m_prime, ed_sig).unwrap();
    assert!(ed.verify(msg, ed_sig).is_err());
}
