//! Ed25519 + ML-DSA-65 hybrid: both components sign `DOMAIN || msg`; both must verify.

use zeroize::Zeroizing;

use crate::{SignError, ed25519, ml_dsa_65};

/// Prefixed to the message before either component signs it.
pub const DOMAIN: &[u8] = b"vmattest hybrid v1\0";

pub(crate) const PUBLIC_LEN: usize = ed25519::PUBLIC_LEN + ml_dsa_65::PUBLIC_LEN;
pub(crate) const SIG_LEN: usize = ed25519::SIG_LEN + ml_dsa_65::SIG_LEN;

pub(crate) struct Secret {
    pub(crate) ed25519: ed25519::Secret,
    pub(crate) ml_dsa: ml_dsa_65::Secret,
}

fn domain_message(msg: &[u8]) -> Vec<u8> {
    [DOMAIN, msg].concat()
}

pub(crate) fn generate() -> Result<Secret, SignError> {
    Ok(Secret {
        ed25519: ed25519::generate()?,
        ml_dsa: ml_dsa_65::generate()?,
    })
}

pub(crate) fn public_raw(sk: &Secret) -> Vec<u8> {
    [
        ed25519::public_raw(&sk.ed25519),
        ml_dsa_65::public_raw(&sk.ml_dsa),
    ]
    .concat()
}

pub(crate) fn sign(sk: &Secret, msg: &[u8]) -> Result<Vec<u8>, SignError> {
    let m = domain_message(msg);
    let mut sig = ed25519::sign(&sk.ed25519, &m);
    sig.extend_from_slice(&ml_dsa_65::sign(&sk.ml_dsa, &m)?);
    Ok(sig)
}

/// Splits `raw` into the Ed25519 and ML-DSA-65 keys, validating both.
pub(crate) fn split_public(raw: &[u8]) -> Result<(&[u8], &[u8]), SignError> {
    if raw.len() != PUBLIC_LEN {
        return Err(SignError::PublicKeyLength {
            alg: vmattest_core::sig::SigAlg::HybridEd25519MlDsa65,
            expected: PUBLIC_LEN,
            found: raw.len(),
        });
    }
    let (ed, ml) = raw
        .split_at_checked(ed25519::PUBLIC_LEN)
        .ok_or(SignError::PublicKeyLength {
            alg: vmattest_core::sig::SigAlg::HybridEd25519MlDsa65,
            expected: PUBLIC_LEN,
            found: raw.len(),
        })?;
    ed25519::check_public(ed)?;
    ml_dsa_65::check_public(ml)?;
    Ok((ed, ml))
}

/// Checks both halves, always both, and succeeds only if both verify.
pub(crate) fn verify(raw: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let Ok((ed_pub, ml_pub)) = split_public(raw) else {
        return false;
    };
    let Some((ed_sig, ml_sig)) = sig.split_at_checked(ed25519::SIG_LEN) else {
        return false;
    };
    let m = domain_message(msg);
    let ed_ok = ed25519::verify(ed_pub, &m, ed_sig);
    let ml_ok = ml_dsa_65::verify(ml_pub, &m, ml_sig);
    ed_ok & ml_ok
}

/// The two PKCS#8 documents, Ed25519 first.
pub(crate) fn pkcs8_ders(sk: &Secret) -> [Zeroizing<Vec<u8>>; 2] {
    [
        ed25519::pkcs8_der(&sk.ed25519),
        ml_dsa_65::pkcs8_der(&sk.ml_dsa),
    ]
}

/// The two SPKI documents, Ed25519 first. `raw` must have passed [`split_public`].
pub(crate) fn spki_ders(raw: &[u8]) -> [Vec<u8>; 2] {
    let (ed, ml) = raw
        .split_at_checked(ed25519::PUBLIC_LEN)
        .unwrap_or((raw, &[]));
    [ed25519::spki_der(ed), ml_dsa_65::spki_der(ml)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_half_alone_is_not_enough() {
        let sk = generate().unwrap();
        let raw = public_raw(&sk);
        let sig = sign(&sk, b"msg").unwrap();
        assert!(verify(&raw, b"msg", &sig));
        // Replace one half with a valid signature by the same component over the message
        // without the domain prefix: the other half still verifies, so the whole must fail.
        let mut bad_ed = ed25519::sign(&sk.ed25519, b"msg");
        bad_ed.extend_from_slice(sig.get(ed25519::SIG_LEN..).unwrap());
        assert!(!verify(&raw, b"msg", &bad_ed));
        let mut bad_ml = sig.get(..ed25519::SIG_LEN).unwrap().to_vec();
        bad_ml.extend_from_slice(&ml_dsa_65::sign(&sk.ml_dsa, b"msg").unwrap());
        assert!(!verify(&raw, b"msg", &bad_ml));
    }
}
