//! `TPM2_MakeCredential` in software (TPM 2.0 Part 1, "Credential Protection"), for an ECC
//! P-256 endorsement key with the TCG default template (nameAlg SHA-256, AES-128-CFB): a
//! secret that only `TPM2_ActivateCredential` on the TPM holding that EK can recover, and only
//! for the object of the given name (the attestation key) resident beside it.
//!
//! Seed = KDFe(SHA-256, Z, "IDENTITY", Qe.x, Qek.x) from an ephemeral ECDH with the EK; the
//! credential is sealed with AES-128-CFB under KDFa(seed, "STORAGE", name) and bound by
//! HMAC-SHA-256 under KDFa(seed, "INTEGRITY") over the ciphertext and the name.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use hmac::{KeyInit as _, Mac};
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::{AffinePoint, EncodedPoint, PublicKey as EcPublic, SecretKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Largest credential: the EK's nameAlg digest size.
pub const MAX_CREDENTIAL_LEN: usize = 32;
/// A TPM name of a SHA-256 object: the algorithm id and the digest.
const NAME_LEN: usize = 34;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error(
        "endorsement key: expected an uncompressed P-256 point (65 bytes), found {0} bytes that are not one"
    )]
    EkPoint(usize),
    #[error("object name: expected 34 bytes (SHA-256 name), found {0}")]
    Name(usize),
    #[error("credential: expected 1 to 32 bytes, found {0}")]
    Length(usize),
    #[error("randomness: {0}")]
    Random(String),
}

impl vmattest_core::class::Classify for CredentialError {
    fn class(&self) -> vmattest_core::class::ErrorClass {
        match self {
            CredentialError::Random(_) => vmattest_core::class::ErrorClass::Environment,
            _ => vmattest_core::class::ErrorClass::Input,
        }
    }
}

/// What `TPM2_ActivateCredential` takes: the contents of `TPM2B_ID_OBJECT` and of
/// `TPM2B_ENCRYPTED_SECRET` (without their own size fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    pub id_object: Vec<u8>,
    pub encrypted_secret: Vec<u8>,
}

/// KDFa (SP 800-108 counter mode, HMAC-SHA-256) as the TPM defines it; `label` without its NUL.
fn kdfa(
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    let len = (bits as usize).div_ceil(8);
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter = 1u32;
    while out.len() < len {
        // HMAC accepts keys of any length.
        let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(&counter.to_be_bytes());
        mac.update(label);
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// KDFe (SP 800-56A concatenation KDF, SHA-256) as the TPM defines it, for one digest's worth.
fn kdfe(z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(label);
    h.update([0]);
    h.update(party_u);
    h.update(party_v);
    Zeroizing::new(h.finalize().into())
}

/// AES-128 in full-block CFB mode with a zero IV, as TPM credential protection uses it.
fn aes128_cfb(key: &[u8], data: &mut [u8]) {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut feedback = GenericArray::clone_from_slice(&[0u8; 16]);
    for chunk in data.chunks_mut(16) {
        cipher.encrypt_block(&mut feedback);
        for (b, k) in chunk.iter_mut().zip(feedback.iter()) {
            *b ^= k;
        }
        feedback[..chunk.len()].copy_from_slice(chunk);
    }
}

fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + bytes.len());
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Protects `credential` for the TPM whose EK is `ek_sec1` (uncompressed P-256), for the object
/// named `name` (a SHA-256 name: `000b || digest`). Randomness comes from the OS.
pub fn make_credential(
    ek_sec1: &[u8],
    name: &[u8],
    credential: &[u8],
) -> Result<MadeCredential, CredentialError> {
    let ek = EncodedPoint::from_bytes(ek_sec1)
        .ok()
        .filter(|p| !p.is_compressed() && !p.is_identity())
        .and_then(|p| Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&p)))
        .and_then(|p| EcPublic::from_affine(p).ok())
        .ok_or(CredentialError::EkPoint(ek_sec1.len()))?;
    if name.len() != NAME_LEN {
        return Err(CredentialError::Name(name.len()));
    }
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL_LEN {
        return Err(CredentialError::Length(credential.len()));
    }
    let ephemeral = loop {
        let mut d = Zeroizing::new([0u8; 32]);
        getrandom::fill(d.as_mut_slice()).map_err(|e| CredentialError::Random(e.to_string()))?;
        // Below the group order and not zero: all but about 2^-32 of draws.
        if let Ok(k) = SecretKey::from_slice(d.as_slice()) {
            break k;
        }
    };
    let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), ek.as_affine());
    let qe = ephemeral.public_key().to_encoded_point(false);
    let qek = ek.to_encoded_point(false);
    let (qe_x, qe_y) = (qe.x().map(|x| x.to_vec()), qe.y().map(|y| y.to_vec()));
    let (Some(qe_x), Some(qe_y), Some(qek_x)) = (qe_x, qe_y, qek.x()) else {
        return Err(CredentialError::EkPoint(ek_sec1.len()));
    };
    let seed = kdfe(shared.raw_secret_bytes(), b"IDENTITY", &qe_x, qek_x);

    let sym_key = kdfa(seed.as_slice(), b"STORAGE", name, &[], 128);
    let mut enc_identity = tpm2b(credential);
    aes128_cfb(&sym_key, &mut enc_identity);
    let hmac_key = kdfa(seed.as_slice(), b"INTEGRITY", &[], &[], 256);
    let mut mac =
        <hmac::Hmac<Sha256>>::new_from_slice(&hmac_key).unwrap_or_else(|_| unreachable!());
    mac.update(&enc_identity);
    mac.update(name);
    let integrity = mac.finalize().into_bytes();

    let mut id_object = tpm2b(&integrity);
    id_object.extend_from_slice(&enc_identity);
    let mut encrypted_secret = tpm2b(&qe_x);
    encrypted_secret.extend_from_slice(&tpm2b(&qe_y));
    Ok(MadeCredential {
        id_object,
        encrypted_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_matches_the_counter_mode_definition() {
        // One block: HMAC(key, 00000001 || "STORAGE" 00 || ctx || 00000080), first 16 bytes.
        let key = [7u8; 32];
        let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(&key).unwrap();
        mac.update(&[0, 0, 0, 1]);
        mac.update(b"STORAGE\0");
        mac.update(b"ctx");
        mac.update(&[0, 0, 0, 128]);
        let want = mac.finalize().into_bytes();
        assert_eq!(
            kdfa(&key, b"STORAGE", b"ctx", &[], 128).as_slice(),
            &want[..16]
        );
        // Two blocks for 512 bits.
        assert_eq!(kdfa(&key, b"X", &[], &[], 512).len(), 64);
    }

    #[test]
    fn cfb_is_its_own_inverse_shape_and_refusals_name_the_input() {
        let mut data = *b"0123456789abcdefXYZ";
        aes128_cfb(&[1; 16], &mut data);
        assert_ne!(&data, b"0123456789abcdefXYZ");
        let ek = SecretKey::from_slice(&[3; 32]).unwrap().public_key();
        let sec1 = ek.to_encoded_point(false);
        let name = [0u8; NAME_LEN];
        assert_eq!(
            make_credential(&sec1.as_bytes()[..64], &name, b"k"),
            Err(CredentialError::EkPoint(64))
        );
        assert_eq!(
            make_credential(sec1.as_bytes(), &name[..33], b"k"),
            Err(CredentialError::Name(33))
        );
        assert_eq!(
            make_credential(sec1.as_bytes(), &name, &[0; 33]),
            Err(CredentialError::Length(33))
        );
        let made = make_credential(sec1.as_bytes(), &name, &[9; 32]).unwrap();
        assert_eq!(made.id_object.len(), 2 + 32 + 2 + 32);
        assert_eq!(made.encrypted_secret.len(), 2 + 32 + 2 + 32);
    }
}
