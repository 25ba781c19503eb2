//! The quote file (`vmattest-tpm-quote/1`, docs/FORMAT.md): a TPM quote with the PCR values
//! it covers and the event log of a bound PCR; written by `tpm quote` and `--bind-pcr`,
//! verified here without a TPM against a pinned attestation key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_quote::KeyCertError;

use crate::eventlog::{self, Event};
use crate::files::{self, FileError};

pub const QUOTE_FORMAT: &str = "vmattest-tpm-quote/1";
/// Largest quote or certification file accepted.
pub const MAX_QUOTE_FILE: u64 = 64 * 1024;
/// Largest attestation key public area accepted.
const MAX_AK: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum QuoteFileError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: expected a {what} document")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("attestation key {path}")]
    Ak {
        path: PathBuf,
        #[source]
        source: vmattest_quote::ParseError,
    },
    #[error("quote {path}")]
    Quote {
        path: PathBuf,
        #[source]
        source: vmattest_quote::QuoteError,
    },
    #[error(
        "quote {path}: the events of PCR {pcr} replay to {replayed}, the quoted value is {quoted}"
    )]
    Replay {
        path: PathBuf,
        pcr: u32,
        replayed: String,
        quoted: String,
    },
    #[error("quote {path}")]
    Events {
        path: PathBuf,
        #[source]
        source: eventlog::BadEventDigest,
    },
    #[error("{path}: key certification")]
    Certification {
        path: PathBuf,
        #[source]
        source: KeyCertError,
    },
    #[error("{path}")]
    Key {
        path: PathBuf,
        #[source]
        source: vmattest_sign::SignError,
    },
    #[error("encoding the quote file")]
    Encode(#[source] serde_json::Error),
}

impl Classify for QuoteFileError {
    fn class(&self) -> ErrorClass {
        match self {
            QuoteFileError::File(e) => e.class(),
            QuoteFileError::Events { .. } => ErrorClass::Verification,
            QuoteFileError::Json { .. }
            | QuoteFileError::Malformed { .. }
            | QuoteFileError::Ak { .. } => ErrorClass::Input,
            QuoteFileError::Quote { source, .. } => match source {
                vmattest_quote::QuoteError::Malformed(_)
                | vmattest_quote::QuoteError::InvalidPcrList(_) => ErrorClass::Input,
                _ => ErrorClass::Verification,
            },
            QuoteFileError::Certification { source, .. } => match source {
                KeyCertError::Ak(_)
                | KeyCertError::Key(_)
                | KeyCertError::Signature(_)
                | KeyCertError::AkNotRestricted => ErrorClass::Input,
                _ => ErrorClass::Verification,
            },
            QuoteFileError::Key { source, .. } => source.class(),
            QuoteFileError::Replay { .. } => ErrorClass::Verification,
            QuoteFileError::Encode(_) => ErrorClass::Environment,
        }
    }
}

/// The quote file: JSON with hex fields.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteFile {
    pub format: String,
    /// Marshalled TPMS_ATTEST.
    pub attest: String,
    /// ECDSA P-256 r || s.
    pub signature: String,
    pub pcrs: Vec<PcrValue>,
    /// Measurements into one of the quoted PCRs that a verifier replays; absent for a plain
    /// `tpm quote`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

pub use vmattest_api::host::PcrValue;

fn pcr_values(q: &vmattest_tpm::Quote) -> Vec<PcrValue> {
    q.pcrs
        .iter()
        .zip(&q.pcr_values)
        .map(|(&index, v)| PcrValue {
            index,
            sha256: hex::encode(v),
        })
        .collect()
}

/// Writes a quote file.
pub fn write(
    out: &Path,
    q: &vmattest_tpm::Quote,
    events: Vec<Event>,
) -> Result<(), QuoteFileError> {
    let file = QuoteFile {
        format: QUOTE_FORMAT.into(),
        attest: hex::encode(&q.attest),
        signature: hex::encode(q.signature.to_bytes()),
        pcrs: pcr_values(q),
        events,
    };
    let text = serde_json::to_vec_pretty(&file).map_err(QuoteFileError::Encode)?;
    files::write_atomic(out, &text, "quote")?;
    Ok(())
}

/// A quote over a server's nonce, as host evidence.
pub fn host_evidence(
    nonce: &[u8],
    q: &vmattest_tpm::Quote,
    events: Vec<Event>,
) -> vmattest_api::host::HostEvidence {
    vmattest_api::host::HostEvidence {
        nonce: hex::encode(nonce),
        attest: hex::encode(&q.attest),
        signature: hex::encode(q.signature.to_bytes()),
        pcrs: pcr_values(q),
        events,
    }
}

/// A quote file, parsed (capped; nothing checked beyond its JSON shape).
fn read_quote_file(quote: &Path) -> Result<QuoteFile, QuoteFileError> {
    let text = files::read_capped(quote, MAX_QUOTE_FILE, "quote")?;
    serde_json::from_slice(&text).map_err(|source| QuoteFileError::Json {
        path: quote.to_path_buf(),
        what: "quote",
        source,
    })
}

/// The PCR values a quote file lists (not verified: golden values an admin vouches for).
pub fn listed_pcrs(quote: &Path) -> Result<BTreeMap<u32, String>, QuoteFileError> {
    let file = read_quote_file(quote)?;
    Ok(file.pcrs.into_iter().map(|p| (p.index, p.sha256)).collect())
}

/// A quote that verified, with what it covers.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedQuote {
    pub pcrs: Vec<u32>,
    pub pcr_digest: String,
    pub values: BTreeMap<u32, String>,
    pub events: Vec<Event>,
}

impl std::fmt::Display for VerifiedQuote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.pcrs.iter().map(u32::to_string).collect();
        write!(
            f,
            "OK: quote of sha256:{} signed by the pinned attestation key over the nonce",
            list.join(",")
        )?;
        for (index, value) in &self.values {
            write!(f, "\n  PCR {index:>2} {value}")?;
        }
        for e in &self.events {
            write!(f, "\n  PCR {:>2} event {} {}", e.pcr, e.kind, e.value)?;
        }
        Ok(())
    }
}

/// Reads an attestation key's public area (as `tpm ak` writes it).
pub fn read_ak(path: &Path) -> Result<(Vec<u8>, vmattest_quote::PublicKey), QuoteFileError> {
    let bytes = files::read_capped(path, MAX_AK, "attestation key")?;
    let ak =
        vmattest_quote::parse_public_ecc_p256(&bytes).map_err(|source| QuoteFileError::Ak {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((bytes, ak))
}

/// Verifies a quote file: the attestation key's signature over `nonce` and the PCR values,
/// and every bound PCR's events replaying to its quoted value.
pub fn verify(quote: &Path, ak: &Path, nonce: &[u8]) -> Result<VerifiedQuote, QuoteFileError> {
    let (_, ak) = read_ak(ak)?;
    let file = read_quote_file(quote)?;
    let bad = |detail: String| QuoteFileError::Malformed {
        path: quote.to_path_buf(),
        detail,
    };
    if file.format != QUOTE_FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {QUOTE_FORMAT:?}",
            file.format
        )));
    }
    let field = |name: &str, hexed: &str| {
        hex::decode(hexed).map_err(|_| bad(format!("field {name}: expected hex")))
    };
    let attest = field("attest", &file.attest)?;
    let signature = vmattest_quote::Signature::from_raw(&field("signature", &file.signature)?)
        .map_err(|e| bad(format!("field signature: {e}")))?;
    let mut pcrs = Vec::with_capacity(file.pcrs.len());
    for p in &file.pcrs {
        let v: [u8; 32] = field("pcrs", &p.sha256)?.try_into().map_err(|v: Vec<u8>| {
            bad(format!(
                "PCR {} value of {} bytes, expected 32",
                p.index,
                v.len()
            ))
        })?;
        pcrs.push((p.index, v));
    }
    let q =
        vmattest_quote::verify_quote(&ak, &attest, &signature, nonce, &pcrs).map_err(|source| {
            QuoteFileError::Quote {
                path: quote.to_path_buf(),
                source,
            }
        })?;
    let mut bound: Vec<u32> = file.events.iter().map(|e| e.pcr).collect();
    bound.sort_unstable();
    bound.dedup();
    for pcr in bound {
        let replayed =
            eventlog::replay(&file.events, pcr).map_err(|source| QuoteFileError::Events {
                path: quote.to_path_buf(),
                source,
            })?;
        let quoted = pcrs.iter().find(|(i, _)| *i == pcr).map(|(_, v)| *v);
        if quoted != Some(replayed) {
            return Err(QuoteFileError::Replay {
                path: quote.to_path_buf(),
                pcr,
                replayed: hex::encode(replayed),
                quoted: quoted.map_or_else(|| "not quoted".into(), hex::encode),
            });
        }
    }
    Ok(VerifiedQuote {
        pcrs: q.pcr_indices,
        pcr_digest: hex::encode(q.pcr_digest),
        values: file
            .pcrs
            .iter()
            .map(|p| (p.index, p.sha256.clone()))
            .collect(),
        events: file.events,
    })
}

/// Checks that `pubkey` is a non-exportable key of the TPM whose attestation key `ak` is
/// pinned, from the certification `tpm keygen` wrote; returns the key and its TPM name.
pub fn verify_key(
    pubkey: &Path,
    ak: &Path,
    certify: &Path,
) -> Result<(vmattest_sign::PublicKey, Vec<u8>), QuoteFileError> {
    let key =
        vmattest_sign::keyfile::read_public_key(pubkey).map_err(|source| QuoteFileError::Key {
            path: pubkey.to_path_buf(),
            source,
        })?;
    let (ak_bytes, _) = read_ak(ak)?;
    let doc = read_certify(certify)?;
    let [tpmt, attest, signature, nonce] =
        doc.decode().map_err(|detail| QuoteFileError::Malformed {
            path: certify.to_path_buf(),
            detail,
        })?;
    let cert = vmattest_quote::KeyCertification {
        key: &tpmt,
        attest: &attest,
        signature: &signature,
        nonce: &nonce,
    };
    let name =
        vmattest_quote::check_key_certification(key.raw(), &ak_bytes, &cert).map_err(|source| {
            QuoteFileError::Certification {
                path: certify.to_path_buf(),
                source,
            }
        })?;
    Ok((key, name))
}

/// Reads a key certification document (`tpm keygen`'s `PUBKEY.certify`).
pub fn read_certify(path: &Path) -> Result<vmattest_api::CertifyDoc, QuoteFileError> {
    let text = files::read_capped(path, MAX_QUOTE_FILE, "certification")?;
    serde_json::from_slice(&text).map_err(|source| QuoteFileError::Json {
        path: path.to_path_buf(),
        what: "certification",
        source,
    })
}

/// The AK and the key's certification for registering a TPM-backed host.
pub fn tpm_binding(ak: &Path, certify: &Path) -> Result<vmattest_api::TpmBinding, QuoteFileError> {
    // The server checks the key and its certification; sent as read.
    let ak_bytes = files::read_capped(ak, MAX_AK, "attestation key")?;
    Ok(vmattest_api::TpmBinding {
        ak: hex::encode(ak_bytes),
        certify: read_certify(certify)?,
    })
}
