//! Checking quotes and certifications against an attestation key and expected values.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use vmattest_core::class::{Classify, ErrorClass};

use crate::attest::{
    Attest, AttestType, Attested, MAX_ATTEST_LEN, PcrSelection, format_selection, parse_attest,
};
use crate::marshal::{MAX_PCR_SELECT, ParseError, TPM_ALG_SHA256, st_name};
use crate::public::PublicKey;
use crate::signature::Signature;

/// Why evidence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("malformed evidence")]
    Malformed(#[from] ParseError),
    #[error("bad signature: the attestation key did not sign these {len} attest bytes")]
    BadSignature { len: usize },
    #[error("wrong attestation type: expected {expected}, found {found}")]
    WrongType { expected: AttestType, found: String },
    #[error(
        "nonce mismatch: extraData ({found_len} bytes) is not the expected nonce ({expected_len} bytes)"
    )]
    NonceMismatch {
        expected_len: usize,
        found_len: usize,
    },
    #[error("PCR selection mismatch: expected {expected}, the quote selects {found}")]
    PcrSelectionMismatch { expected: String, found: String },
    #[error("PCR digest of {selection} is {computed}, the quote says {quoted}")]
    PcrDigestMismatch {
        selection: String,
        computed: String,
        quoted: String,
    },
    #[error("certified name mismatch: expected {expected}, the attestation names {found}")]
    NameMismatch { expected: String, found: String },
    #[error("invalid PCR list: {0}")]
    InvalidPcrList(String),
}

impl Classify for QuoteError {
    fn class(&self) -> ErrorClass {
        match self {
            QuoteError::Malformed(e) => e.class(),
            // A certification handed over as a quote (or the reverse) is the wrong kind of input.
            QuoteError::WrongType { .. } | QuoteError::InvalidPcrList(_) => ErrorClass::Input,
            // The AK signed something else, for another nonce, over other PCRs or another key.
            QuoteError::BadSignature { .. }
            | QuoteError::NonceMismatch { .. }
            | QuoteError::PcrSelectionMismatch { .. }
            | QuoteError::PcrDigestMismatch { .. }
            | QuoteError::NameMismatch { .. } => ErrorClass::Verification,
        }
    }
}

/// A verified quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub attest: Attest,
    /// The quoted SHA-256 PCR indices, ascending.
    pub pcr_indices: Vec<u32>,
    /// SHA-256 over the PCR values in ascending index order.
    pub pcr_digest: [u8; 32],
}

/// A verified certification: the AK's TPM holds the key with this name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certification {
    pub attest: Attest,
    pub name: Vec<u8>,
    pub qualified_name: Vec<u8>,
}

/// Checks the size and the ECDSA-P256-SHA256 signature, then parses.
fn verified_attest(
    ak: &PublicKey,
    attest_bytes: &[u8],
    signature: &Signature,
    expected: AttestType,
) -> Result<Attest, QuoteError> {
    if attest_bytes.len() > MAX_ATTEST_LEN {
        return Err(ParseError::Oversize {
            structure: "TPMS_ATTEST",
            max: MAX_ATTEST_LEN,
            found: attest_bytes.len(),
        }
        .into());
    }
    let bad = QuoteError::BadSignature {
        len: attest_bytes.len(),
    };
    let sig = p256::ecdsa::Signature::from_slice(&signature.to_raw()).map_err(|_| bad.clone())?;
    let digest = Sha256::digest(attest_bytes);
    ak.verifying_key()
        .verify_prehash(&digest, &sig)
        .map_err(|_| bad)?;
    let attest = parse_attest(attest_bytes).map_err(|e| match e {
        ParseError::UnsupportedType { found, .. } => QuoteError::WrongType {
            expected,
            found: format!("{} ({found:#06x})", st_name(found)),
        },
        other => QuoteError::Malformed(other),
    })?;
    if attest.attest_type() != expected {
        return Err(QuoteError::WrongType {
            expected,
            found: attest.attest_type().to_string(),
        });
    }
    Ok(attest)
}

fn check_nonce(attest: &Attest, expected_nonce: &[u8]) -> Result<(), QuoteError> {
    if bool::from(attest.extra_data.as_slice().ct_eq(expected_nonce)) {
        Ok(())
    } else {
        Err(QuoteError::NonceMismatch {
            expected_len: expected_nonce.len(),
            found_len: attest.extra_data.len(),
        })
    }
}

/// The SHA-256 bank selection of `indices` (ascending, distinct, below 64).
fn sha256_selection(indices: &[u32]) -> PcrSelection {
    let max = indices.iter().copied().max().unwrap_or(0);
    let bytes = (usize::try_from(max / 8).unwrap_or(usize::MAX) + 1).max(3);
    let mut select = vec![0u8; bytes];
    for &i in indices {
        if let Some(byte) = select.get_mut(usize::try_from(i / 8).unwrap_or(usize::MAX)) {
            *byte |= 1 << (i % 8);
        }
    }
    PcrSelection {
        hash: TPM_ALG_SHA256,
        select,
    }
}

/// Whether the quote's selection is exactly one SHA-256 bank with the same PCRs.
fn selection_matches(found: &[PcrSelection], indices: &[u32]) -> bool {
    match found {
        [only] => only.hash == TPM_ALG_SHA256 && only.indices() == indices,
        _ => false,
    }
}

/// Verifies a `TPM2_Quote`: the ECDSA-P256-SHA256 signature by `ak` over `attest_bytes`,
/// the magic and type, `extraData == expected_nonce` (constant time), a PCR selection of
/// exactly the SHA-256 bank with the indices in `pcrs`, and
/// `pcrDigest == SHA-256(values in ascending index order)`.
pub fn verify_quote(
    ak: &PublicKey,
    attest_bytes: &[u8],
    signature: &Signature,
    expected_nonce: &[u8],
    pcrs: &[(u32, [u8; 32])],
) -> Result<Quote, QuoteError> {
    let mut sorted: Vec<(u32, [u8; 32])> = pcrs.to_vec();
    sorted.sort_by_key(|(index, _)| *index);
    if sorted.is_empty() {
        return Err(QuoteError::InvalidPcrList("no PCRs given".to_owned()));
    }
    let pcr_limit = u32::try_from(MAX_PCR_SELECT * 8).unwrap_or(u32::MAX);
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(QuoteError::InvalidPcrList(format!(
                "PCR {} given twice",
                pair[0].0
            )));
        }
    }
    if let Some((index, _)) = sorted.iter().find(|(index, _)| *index >= pcr_limit) {
        return Err(QuoteError::InvalidPcrList(format!(
            "PCR index {index} is above the largest supported index {}",
            pcr_limit - 1
        )));
    }
    let indices: Vec<u32> = sorted.iter().map(|(index, _)| *index).collect();
    let expected_selection = sha256_selection(&indices);

    let attest = verified_attest(ak, attest_bytes, signature, AttestType::Quote)?;
    check_nonce(&attest, expected_nonce)?;
    let Attested::Quote {
        pcr_select,
        pcr_digest,
    } = &attest.attested
    else {
        return Err(QuoteError::WrongType {
            expected: AttestType::Quote,
            found: attest.attest_type().to_string(),
        });
    };
    if !selection_matches(pcr_select, &indices) {
        return Err(QuoteError::PcrSelectionMismatch {
            expected: expected_selection.to_string(),
            found: format_selection(pcr_select),
        });
    }
    let mut hasher = Sha256::new();
    for (_, value) in &sorted {
        hasher.update(value);
    }
    let computed: [u8; 32] = hasher.finalize().into();
    if !bool::from(computed.as_slice().ct_eq(pcr_digest.as_slice())) {
        return Err(QuoteError::PcrDigestMismatch {
            selection: expected_selection.to_string(),
            computed: hex::encode(computed),
            quoted: hex::encode(pcr_digest),
        });
    }
    Ok(Quote {
        attest,
        pcr_indices: indices,
        pcr_digest: computed,
    })
}

/// Verifies a `TPM2_Certify`: the signature by `ak`, the magic and type, the nonce
/// (constant time), and that the certified name equals `certified_key_name`
/// (for example [`PublicKey::name`] of the key's `TPMT_PUBLIC`).
pub fn verify_certify(
    ak: &PublicKey,
    attest_bytes: &[u8],
    signature: &Signature,
    expected_nonce: &[u8],
    certified_key_name: &[u8],
) -> Result<Certification, QuoteError> {
    let attest = verified_attest(ak, attest_bytes, signature, AttestType::Certify)?;
    check_nonce(&attest, expected_nonce)?;
    let Attested::Certify {
        name,
        qualified_name,
    } = &attest.attested
    else {
        return Err(QuoteError::WrongType {
            expected: AttestType::Certify,
            found: attest.attest_type().to_string(),
        });
    };
    if name.as_slice() != certified_key_name {
        return Err(QuoteError::NameMismatch {
            expected: hex::encode(certified_key_name),
            found: hex::encode(name),
        });
    }
    let (name, qualified_name) = (name.clone(), qualified_name.clone());
    Ok(Certification {
        attest,
        name,
        qualified_name,
    })
}
