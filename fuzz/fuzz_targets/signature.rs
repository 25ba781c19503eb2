//! Signature bytes of every algorithm as a signed object carries them: the first byte picks
//! the seed key (Ed25519, P-384, ML-DSA-65, hybrid) whose verification parses the signature;
//! then a u16 signature length, the signature and the message. Other first bytes parse the
//! rest as a raw public key of that algorithm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::{seed_keys, select};
use vmattest_sign::{PublicKey, SigAlg};

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    let keys = seed_keys();
    let alg = [
        SigAlg::Ed25519,
        SigAlg::EcdsaP384,
        SigAlg::MlDsa65,
        SigAlg::HybridEd25519MlDsa65,
    ][usize::from(case % 4)];
    if case < 128 {
        let Some(key) = keys.iter().find(|k| k.alg() == alg) else {
            return;
        };
        if rest.len() < 2 {
            return;
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let (sig, msg) = body.split_at(len.min(body.len()));
        let _ = key.verify(msg, sig);
    } else if let Ok(key) = PublicKey::from_raw(alg, rest) {
        assert_eq!(key.raw(), rest);
        let _ = key.key_id();
        let _ = key.verify(b"message", &[0; 64]);
    }
});
