//! `TPMT_SIGNATURE` for ECDSA P-256 with SHA-256.

use crate::marshal::{P256_BYTES, ParseError, Reader, TPM_ALG_ECDSA, TPM_ALG_SHA256, alg_display};

/// Largest ECDSA `TPMT_SIGNATURE` accepted: sigAlg, hash and two 32-byte `TPM2B`s.
pub const MAX_SIGNATURE_LEN: usize = 2 + 2 + 2 * (2 + P256_BYTES);

/// An ECDSA P-256 signature over SHA-256, as big-endian `r` and `s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    pub r: [u8; 32],
    pub s: [u8; 32],
}

impl Signature {
    /// From raw `r || s` (64 bytes, big-endian), as used by PKCS#11 and WebCrypto.
    pub fn from_raw(bytes: &[u8]) -> Result<Signature, ParseError> {
        let mut r = Reader::new(bytes, "raw ECDSA signature", 2 * P256_BYTES)?;
        let mut sig = Signature {
            r: [0; 32],
            s: [0; 32],
        };
        sig.r.copy_from_slice(r.take(P256_BYTES, "r")?);
        sig.s.copy_from_slice(r.take(P256_BYTES, "s")?);
        r.finish()?;
        Ok(sig)
    }

    /// `r || s`.
    pub fn to_raw(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }
}

/// Parses a `TPMT_SIGNATURE` with sigAlg `TPM_ALG_ECDSA` and hash `TPM_ALG_SHA256`; the
/// `TPM2B_ECC_PARAMETER`s `r` and `s` may be shorter than 32 bytes and are left-padded.
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, ParseError> {
    let mut r = Reader::new(bytes, "TPMT_SIGNATURE", MAX_SIGNATURE_LEN)?;
    let offset = r.pos();
    let sig_alg = r.u16("sigAlg")?;
    if sig_alg != TPM_ALG_ECDSA {
        return Err(r.bad(
            "sigAlg",
            offset,
            "TPM_ALG_ECDSA (0x0018)",
            alg_display(sig_alg),
        ));
    }
    r.expect_alg("hash", TPM_ALG_SHA256, "TPM_ALG_SHA256 (0x000b)")?;
    let sig_r = left_pad(r.tpm2b("signatureR", P256_BYTES)?);
    let sig_s = left_pad(r.tpm2b("signatureS", P256_BYTES)?);
    r.finish()?;
    Ok(Signature { r: sig_r, s: sig_s })
}

/// Left-pads a big-endian integer of at most 32 bytes.
pub(crate) fn left_pad(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let start = 32usize.saturating_sub(bytes.len());
    out[start..].copy_from_slice(&bytes[bytes.len().saturating_sub(32)..]);
    out
}
