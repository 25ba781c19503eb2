//! Ed25519 (RFC 8032) via `ed25519-dalek`; keys in RFC 8410 PKCS#8 v1 / SPKI form.

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use pkcs8::{PrivateKeyInfoRef, SubjectPublicKeyInfoRef};
use vmattest_core::sig::SigAlg;
use zeroize::Zeroizing;

use crate::SignError;
use crate::pem::{secret_der, unparameterised_raw};

pub(crate) const PUBLIC_LEN: usize = 32;
pub(crate) const SIG_LEN: usize = 64;

/// PKCS#8 v1 `PrivateKeyInfo` up to the 32-byte seed (RFC 8410 section 7).
pub(crate) const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// `SubjectPublicKeyInfo` up to the 32-byte public key (RFC 8410 section 4).
pub(crate) const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Zeroizes itself on drop (`ed25519-dalek`'s `zeroize` feature).
pub(crate) type Secret = SigningKey;

pub(crate) fn generate() -> Result<Secret, SignError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice()).map_err(SignError::Random)?;
    Ok(SigningKey::from_bytes(&seed))
}

pub(crate) fn public_raw(sk: &Secret) -> Vec<u8> {
    sk.verifying_key().to_bytes().to_vec()
}

pub(crate) fn sign(sk: &Secret, msg: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    sk.sign(msg).to_bytes().to_vec()
}

/// Parses and validates a raw public key: a canonical point that is not of small order.
pub(crate) fn check_public(raw: &[u8]) -> Result<VerifyingKey, SignError> {
    let bytes: &[u8; PUBLIC_LEN] = raw.try_into().map_err(|_| SignError::PublicKeyLength {
        alg: SigAlg::Ed25519,
        expected: PUBLIC_LEN,
        found: raw.len(),
    })?;
    let invalid = || SignError::InvalidPublicKey {
        alg: SigAlg::Ed25519,
        expected: "a canonical encoding of a curve point of large order",
    };
    let vk = VerifyingKey::from_bytes(bytes).map_err(|_| invalid())?;
    // Re-encoding catches non-canonical encodings, which would give one point two key ids.
    if vk.is_weak() || VerifyingKey::from(vk.to_edwards()).to_bytes() != *bytes {
        return Err(invalid());
    }
    Ok(vk)
}

/// `verify_strict`: rejects non-canonical `S`, small-order `R` and weak keys.
pub(crate) fn verify(raw: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    check_public(raw).is_ok_and(|vk| verify_with(&vk, msg, sig))
}

/// As [`verify`], with a key already checked by [`check_public`].
pub(crate) fn verify_with(vk: &VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
    Signature::from_slice(sig).is_ok_and(|sig| vk.verify_strict(msg, &sig).is_ok())
}

pub(crate) fn pkcs8_der(sk: &Secret) -> Zeroizing<Vec<u8>> {
    let seed = Zeroizing::new(sk.to_bytes());
    secret_der(&[&PKCS8_PREFIX, seed.as_slice()])
}

pub(crate) fn spki_der(raw: &[u8]) -> Vec<u8> {
    [&SPKI_PREFIX[..], raw].concat()
}

/// Accepts PKCS#8 v1 and v2; a v2 public key must match the seed.
pub(crate) fn from_pkcs8(pki: PrivateKeyInfoRef<'_>, origin: &str) -> Result<Secret, SignError> {
    SigningKey::try_from(pki).map_err(|_| SignError::InvalidKey {
        origin: origin.to_owned(),
        alg: SigAlg::Ed25519,
        kind: "private key",
        expected: "an RFC 8410 CurvePrivateKey of 32 bytes, no parameters, a matching public key",
    })
}

pub(crate) fn raw_from_spki(
    spki: SubjectPublicKeyInfoRef<'_>,
    origin: &str,
) -> Result<Vec<u8>, SignError> {
    unparameterised_raw(&spki, SigAlg::Ed25519, origin, |bits| {
        check_public(bits)
            .map(|_| ())
            .map_err(|_| "a 32-byte valid curve point of large order")
    })
}

#[cfg(test)]
mod tests {
    use pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};

    use super::*;

    #[test]
    fn templates_match_the_crate_encoders() {
        let sk = generate().unwrap();
        let ours = pkcs8_der(&sk);
        let theirs = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: sk.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_der()
        .unwrap();
        assert_eq!(ours.as_slice(), theirs.as_bytes());
        let spki = sk.verifying_key().to_public_key_der().unwrap();
        assert_eq!(spki_der(&public_raw(&sk)), spki.as_bytes());
    }
}
