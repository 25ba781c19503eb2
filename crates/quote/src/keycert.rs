//! Is a public key a non-exportable signing key of the TPM whose attestation key is pinned?
//! Checked from a TPM2_Certify of the key by that attestation key (public data only).

use vmattest_core::class::{Classify, ErrorClass};

use crate::attributes::{FIXED_PARENT, FIXED_TPM, RESTRICTED, SIGN_ENCRYPT};
use crate::{
    ParseError, QuoteError, Signature, parse_ecc_public, parse_public_ecc_p256, verify_certify,
};

/// The raw pieces of a key certification.
#[derive(Debug, Clone)]
pub struct KeyCertification<'a> {
    /// The certified key's TPMT_PUBLIC.
    pub key: &'a [u8],
    /// TPMS_ATTEST of TPM2_Certify.
    pub attest: &'a [u8],
    /// The attestation key's ECDSA P-256 `r || s`.
    pub signature: &'a [u8],
    pub nonce: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum KeyCertError {
    #[error("attestation key: {0}")]
    Ak(ParseError),
    #[error("attestation key: expected a restricted, fixedTPM signing key")]
    AkNotRestricted,
    #[error("certified key: {0}")]
    Key(ParseError),
    #[error("signature: {0}")]
    Signature(ParseError),
    #[error("the certified TPM key is not this public key")]
    NotThisKey,
    #[error("TPM key attributes {0:#010x}: expected fixedTPM | fixedParent | sign, unrestricted")]
    Attributes(u32),
    #[error("certification")]
    Certify(#[from] QuoteError),
}

impl Classify for KeyCertError {
    fn class(&self) -> ErrorClass {
        match self {
            KeyCertError::Ak(e) | KeyCertError::Key(e) | KeyCertError::Signature(e) => e.class(),
            // The verifier pinned a key that cannot vouch for anything: a bad parameter.
            KeyCertError::AkNotRestricted => ErrorClass::Input,
            // The certification names another key, or one the TPM could export or use for
            // other purposes: the claim "this key is TPM-resident" fails.
            KeyCertError::NotThisKey | KeyCertError::Attributes(_) => ErrorClass::Verification,
            KeyCertError::Certify(e) => e.class(),
        }
    }
}

/// Returns the key's TPM name when `ak_tpmt` certified `cert.key`, that key is `key_sec1`, and
/// it is a fixedTPM, unrestricted signing key.
pub fn check_key_certification(
    key_sec1: &[u8],
    ak_tpmt: &[u8],
    cert: &KeyCertification<'_>,
) -> Result<Vec<u8>, KeyCertError> {
    let ak = parse_public_ecc_p256(ak_tpmt).map_err(KeyCertError::Ak)?;
    if !ak.is_restricted_signing_key() {
        return Err(KeyCertError::AkNotRestricted);
    }
    let certified = parse_ecc_public(cert.key).map_err(KeyCertError::Key)?;
    if certified.sec1 != key_sec1 {
        return Err(KeyCertError::NotThisKey);
    }
    let want = FIXED_TPM | FIXED_PARENT | SIGN_ENCRYPT;
    if certified.object_attributes & want != want || certified.object_attributes & RESTRICTED != 0 {
        return Err(KeyCertError::Attributes(certified.object_attributes));
    }
    let signature = Signature::from_raw(cert.signature).map_err(KeyCertError::Signature)?;
    verify_certify(&ak, cert.attest, &signature, cert.nonce, &certified.name)?;
    Ok(certified.name)
}
