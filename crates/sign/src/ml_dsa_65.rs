//! ML-DSA-65 (FIPS 204) via RustCrypto `ml-dsa`: pure ML-DSA, empty context, hedged signing.
//!
//! Private keys are stored in the seed form of the IETF LAMPS ML-DSA key format: the 32-byte
//! `xi` from which `ML-DSA.KeyGen_internal` derives the whole key.

use ml_dsa::{EncodedVerifyingKey, ExpandedSigningKey, MlDsa65, Signature, SigningKey};
use pkcs8::{PrivateKeyInfoRef, SubjectPublicKeyInfoRef};
use vmattest_core::sig::SigAlg;
use zeroize::Zeroizing;

use crate::SignError;
use crate::pem::{secret_der, unparameterised_raw};

pub(crate) const PUBLIC_LEN: usize = 1952;
pub(crate) const SIG_LEN: usize = 3309;

/// PKCS#8 v1 `PrivateKeyInfo` (id-ml-dsa-65) whose privateKey holds `seed [0] IMPLICIT
/// OCTET STRING (SIZE (32))`, up to the seed.
pub(crate) const PKCS8_PREFIX: [u8; 22] = [
    0x30, 0x34, 0x02, 0x01, 0x00, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04,
    0x03, 0x12, 0x04, 0x22, 0x80, 0x20,
];
/// `SubjectPublicKeyInfo` (id-ml-dsa-65) up to the 1952-byte public key.
pub(crate) const SPKI_PREFIX: [u8; 22] = [
    0x30, 0x82, 0x07, 0xb2, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03,
    0x12, 0x03, 0x82, 0x07, 0xa1, 0x00,
];

/// The seed-form key (for export) and its expanded form (for hedged signing); both zeroize
/// themselves on drop (`ml-dsa`'s `zeroize` feature).
pub(crate) struct Secret {
    key: SigningKey<MlDsa65>,
    expanded: Box<ExpandedSigningKey<MlDsa65>>,
    public: Vec<u8>,
}

impl Secret {
    fn from_key(key: SigningKey<MlDsa65>) -> Secret {
        let expanded = Box::new(ExpandedSigningKey::from_seed(key.as_seed()));
        let vk: &ml_dsa::VerifyingKey<MlDsa65> = key.as_ref();
        let public = vk.encode().to_vec();
        Secret {
            key,
            expanded,
            public,
        }
    }
}

pub(crate) fn generate() -> Result<Secret, SignError> {
    let mut seed = Zeroizing::new(ml_dsa::Seed::default());
    getrandom::fill(seed.as_mut_slice()).map_err(SignError::Random)?;
    Ok(Secret::from_key(SigningKey::from_seed(&seed)))
}

pub(crate) fn public_raw(sk: &Secret) -> Vec<u8> {
    sk.public.clone()
}

/// Algorithm 2 `ML-DSA.Sign` with `ctx = ""` and 32 bytes of OS randomness (hedged).
pub(crate) fn sign(sk: &Secret, msg: &[u8]) -> Result<Vec<u8>, SignError> {
    let sig = sk
        .expanded
        .sign_randomized(msg, &[], &mut getrandom::SysRng)
        .map_err(|_| SignError::SigningFailed {
            alg: SigAlg::MlDsa65,
        })?;
    Ok(sig.encode().to_vec())
}

pub(crate) fn check_public(raw: &[u8]) -> Result<ml_dsa::VerifyingKey<MlDsa65>, SignError> {
    let enc =
        EncodedVerifyingKey::<MlDsa65>::try_from(raw).map_err(|_| SignError::PublicKeyLength {
            alg: SigAlg::MlDsa65,
            expected: PUBLIC_LEN,
            found: raw.len(),
        })?;
    Ok(ml_dsa::VerifyingKey::decode(&enc))
}

/// Algorithm 3 `ML-DSA.Verify` with `ctx = ""`.
pub(crate) fn verify(raw: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(vk) = check_public(raw) else {
        return false;
    };
    let Ok(sig) = Signature::<MlDsa65>::try_from(sig) else {
        return false;
    };
    vk.verify_with_context(msg, &[], &sig)
}

pub(crate) fn pkcs8_der(sk: &Secret) -> Zeroizing<Vec<u8>> {
    secret_der(&[&PKCS8_PREFIX, sk.key.as_seed().as_slice()])
}

pub(crate) fn spki_der(raw: &[u8]) -> Vec<u8> {
    [&SPKI_PREFIX[..], raw].concat()
}

/// Accepts only the seed form; the expanded-key and `both` forms are refused.
pub(crate) fn from_pkcs8(pki: PrivateKeyInfoRef<'_>, origin: &str) -> Result<Secret, SignError> {
    let key = SigningKey::<MlDsa65>::try_from(pki).map_err(|_| SignError::InvalidKey {
        origin: origin.to_owned(),
        alg: SigAlg::MlDsa65,
        kind: "private key",
        expected: "the seed form [0] IMPLICIT OCTET STRING of 32 bytes, no parameters",
    })?;
    Ok(Secret::from_key(key))
}

pub(crate) fn raw_from_spki(
    spki: SubjectPublicKeyInfoRef<'_>,
    origin: &str,
) -> Result<Vec<u8>, SignError> {
    unparameterised_raw(&spki, SigAlg::MlDsa65, origin, |bits| {
        if bits.len() == PUBLIC_LEN {
            Ok(())
        } else {
            Err("a 1952-byte public key")
        }
    })
}

#[cfg(test)]
mod tests {
    use pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};

    use super::*;

    #[test]
    fn templates_match_the_crate_encoders() {
        let sk = generate().unwrap();
        let theirs = sk.key.to_pkcs8_der().unwrap();
        assert_eq!(pkcs8_der(&sk).as_slice(), theirs.as_bytes());
        let vk: &ml_dsa::VerifyingKey<MlDsa65> = sk.key.as_ref();
        let spki = vk.to_public_key_der().unwrap();
        assert_eq!(spki_der(&public_raw(&sk)), spki.as_bytes());
        assert_eq!(pkcs8_der(&sk).len(), PKCS8_PREFIX.len() + 32);
    }

    #[test]
    fn signing_is_hedged() {
        let sk = generate().unwrap();
        let a = sign(&sk, b"m").unwrap();
        let b = sign(&sk, b"m").unwrap();
        assert_ne!(a, b);
        assert!(verify(&sk.public, b"m", &a) && verify(&sk.public, b"m", &b));
    }
}
