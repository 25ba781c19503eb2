//! ECDSA over P-384 with SHA-384 via `p384`; RFC 6979 deterministic nonces; fixed `r || s`.

use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use pkcs8::{PrivateKeyInfoRef, SubjectPublicKeyInfoRef};
use vmattest_core::sig::SigAlg;
use zeroize::Zeroizing;

use crate::SignError;
use crate::pem::{secret_der, spki_bits};

pub(crate) const PUBLIC_LEN: usize = 97;
pub(crate) const SIG_LEN: usize = 96;
const SCALAR_LEN: usize = 48;

/// PKCS#8 v1 `PrivateKeyInfo` (id-ecPublicKey, secp384r1) wrapping an RFC 5915
/// `ECPrivateKey` v1, up to its 48-byte private scalar.
pub(crate) const PKCS8_PREFIX: [u8; 35] = [
    0x30, 0x81, 0xb6, 0x02, 0x01, 0x00, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x04, 0x81, 0x9e, 0x30, 0x81, 0x9b, 0x02, 0x01,
    0x01, 0x04, 0x30,
];
/// Between the scalar and the 97-byte public point: `[1] { BIT STRING }`.
pub(crate) const PKCS8_MIDDLE: [u8; 5] = [0xa1, 0x64, 0x03, 0x62, 0x00];
/// `SubjectPublicKeyInfo` (id-ecPublicKey, secp384r1) up to the 97-byte point.
pub(crate) const SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// Zeroizes its scalar on drop (`ecdsa`'s `Drop` impl).
pub(crate) type Secret = SigningKey;

pub(crate) fn generate() -> Result<Secret, SignError> {
    // A uniform 384-bit string is a valid scalar except with probability below 2^-189.
    for _ in 0..32 {
        let mut bytes = Zeroizing::new([0u8; SCALAR_LEN]);
        getrandom::fill(bytes.as_mut_slice()).map_err(SignError::Random)?;
        if let Ok(sk) = SigningKey::from_slice(bytes.as_slice()) {
            return Ok(sk);
        }
    }
    Err(SignError::KeyGeneration {
        alg: SigAlg::EcdsaP384,
    })
}

pub(crate) fn public_raw(sk: &Secret) -> Vec<u8> {
    sk.verifying_key().to_sec1_point(false).as_bytes().to_vec()
}

pub(crate) fn sign(sk: &Secret, msg: &[u8]) -> Result<Vec<u8>, SignError> {
    use p384::ecdsa::signature::Signer as _;
    let sig: Signature = sk.try_sign(msg).map_err(|_| SignError::SigningFailed {
        alg: SigAlg::EcdsaP384,
    })?;
    Ok(sig.to_bytes().to_vec())
}

/// Requires SEC1 uncompressed form (`0x04 || x || y`) of a point on the curve.
pub(crate) fn check_public(raw: &[u8]) -> Result<VerifyingKey, SignError> {
    if raw.len() != PUBLIC_LEN {
        return Err(SignError::PublicKeyLength {
            alg: SigAlg::EcdsaP384,
            expected: PUBLIC_LEN,
            found: raw.len(),
        });
    }
    let invalid = || SignError::InvalidPublicKey {
        alg: SigAlg::EcdsaP384,
        expected: "an uncompressed SEC1 point on P-384",
    };
    if raw.first() != Some(&0x04) {
        return Err(invalid());
    }
    VerifyingKey::from_sec1_bytes(raw).map_err(|_| invalid())
}

pub(crate) fn verify(raw: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    use p384::ecdsa::signature::Verifier as _;
    let Ok(vk) = check_public(raw) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(sig) else {
        return false;
    };
    vk.verify(msg, &sig).is_ok()
}

pub(crate) fn pkcs8_der(sk: &Secret) -> Zeroizing<Vec<u8>> {
    let scalar = Zeroizing::new(sk.to_bytes());
    let public = public_raw(sk);
    secret_der(&[&PKCS8_PREFIX, scalar.as_slice(), &PKCS8_MIDDLE, &public])
}

pub(crate) fn spki_der(raw: &[u8]) -> Vec<u8> {
    [&SPKI_PREFIX[..], raw].concat()
}

/// Accepts an `ECPrivateKey` with or without the optional curve and public key; a public
/// key, when present, must match the scalar. The curve was checked by the caller.
pub(crate) fn from_pkcs8(pki: PrivateKeyInfoRef<'_>, origin: &str) -> Result<Secret, SignError> {
    let sk = p384::SecretKey::try_from(pki).map_err(|_| SignError::InvalidKey {
        origin: origin.to_owned(),
        alg: SigAlg::EcdsaP384,
        kind: "private key",
        expected: "an RFC 5915 ECPrivateKey with a scalar in [1, n) and a matching public key",
    })?;
    Ok(SigningKey::from(&sk))
}

/// Accepts compressed or uncompressed points; the raw key is always uncompressed.
pub(crate) fn raw_from_spki(
    spki: SubjectPublicKeyInfoRef<'_>,
    origin: &str,
) -> Result<Vec<u8>, SignError> {
    let bits = spki_bits(&spki, SigAlg::EcdsaP384, origin)?;
    let vk = VerifyingKey::from_sec1_bytes(bits).map_err(|_| SignError::InvalidKey {
        origin: origin.to_owned(),
        alg: SigAlg::EcdsaP384,
        kind: "public key",
        expected: "a SEC1 point on P-384",
    })?;
    Ok(vk.to_sec1_point(false).as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};

    use super::*;

    #[test]
    fn templates_match_the_crate_encoders() {
        let sk = generate().unwrap();
        let theirs = p384::SecretKey::from(&sk).to_pkcs8_der().unwrap();
        assert_eq!(pkcs8_der(&sk).as_slice(), theirs.as_bytes());
        let spki = sk.verifying_key().to_public_key_der().unwrap();
        assert_eq!(spki_der(&public_raw(&sk)), spki.as_bytes());
    }

    #[test]
    fn both_s_and_n_minus_s_verify() {
        let sk = generate().unwrap();
        let raw = public_raw(&sk);
        let sig = Signature::from_slice(&sign(&sk, b"m").unwrap()).unwrap();
        let (r, s) = sig.split_scalars();
        let other = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        assert_ne!(other.to_bytes(), sig.to_bytes());
        assert!(verify(&raw, b"m", &sig.to_bytes()));
        assert!(verify(&raw, b"m", &other.to_bytes()));
    }

    #[test]
    fn compressed_raw_key_is_refused() {
        let sk = generate().unwrap();
        let compressed = sk.verifying_key().to_sec1_point(true);
        assert!(check_public(compressed.as_bytes()).is_err());
    }
}
