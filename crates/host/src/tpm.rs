//! The host TPM: opening it, its resident signer, sealed store secrets, and the workflows of
//! `tpm keygen|ak|extend|quote|seal|unseal`.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use vmattest_api::{CERTIFY_FORMAT, CertifyDoc};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_sign::Signer as _;
use vmattest_store::{StoreError, StoreSecret};
use vmattest_tpm::{SealedBlob, Tpm, TpmConfig};
use vmattest_vmconfig::measure::Accept;

use crate::files::{self, FileError};

/// Largest sealed blob read.
const MAX_SEALED: u64 = 64 * 1024;
/// Largest secret that fits a TPM sealed object.
const MAX_SECRET: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("TPM")]
    Tpm(#[source] vmattest_tpm::TpmError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: store secret")]
    Secret {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("{path}: sealed blob")]
    Blob {
        path: PathBuf,
        #[source]
        source: vmattest_tpm::TpmError,
    },
    #[error("{what} {found:?}: expected {expected}")]
    Arg {
        what: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: public key")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: vmattest_sign::SignError,
    },
    #[error("reading OS randomness: {0}")]
    Random(String),
    #[error("encoding {0}")]
    Encode(&'static str),
}

impl From<vmattest_tpm::TpmError> for TpmError {
    fn from(e: vmattest_tpm::TpmError) -> TpmError {
        TpmError::Tpm(e)
    }
}

impl Classify for TpmError {
    fn class(&self) -> ErrorClass {
        match self {
            TpmError::Tpm(e) | TpmError::Blob { source: e, .. } => e.class(),
            TpmError::File(e) => e.class(),
            TpmError::Secret { source, .. } => source.class(),
            TpmError::Arg { .. } => ErrorClass::Input,
            TpmError::KeyFile { .. } => ErrorClass::Environment,
            TpmError::Random(_) | TpmError::Encode(_) => ErrorClass::Environment,
        }
    }
}

/// The host's TPM (`$VMATTEST_TPM_TCTI`, else the kernel's resource manager).
pub fn open() -> Result<Tpm, TpmError> {
    if !cfg!(feature = "tpm") {
        return Err(vmattest_tpm::TpmError::NotBuilt.into());
    }
    let config = TpmConfig::from_env().map_err(vmattest_tpm::TpmError::from)?;
    Ok(Tpm::open(&config)?)
}

/// The TPM-resident signing key as a signer.
pub fn signer() -> Result<vmattest_tpm::TpmSigner, TpmError> {
    Ok(vmattest_tpm::TpmSigner::new(open()?)?)
}

/// A store secret from a secret file, or from a blob sealed by `tpm seal` (unsealed by this
/// host's TPM: refused, naming the PCR, when the host's state differs from sealing time).
pub fn load_secret(path: &Path) -> Result<StoreSecret, TpmError> {
    let mut head = [0u8; 8];
    // Opened without blocking and type-checked: a FIFO here must not hang the command.
    let sealed = vmattest_vmconfig::measure::open_checked(path, Accept::File)
        .is_ok_and(|mut f| std::io::Read::read_exact(&mut f, &mut head).is_ok())
        && &head == vmattest_tpm::SEALED_MAGIC;
    let secret = |source| TpmError::Secret {
        path: path.to_path_buf(),
        source,
    };
    if !sealed {
        return StoreSecret::load(path).map_err(secret);
    }
    let bytes = files::read_capped(path, MAX_SEALED, "sealed secret")?;
    let blob = SealedBlob::from_bytes(&bytes).map_err(|e| TpmError::Blob {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let text = open()?.unseal(&blob)?;
    StoreSecret::parse(&text, &format!("sealed secret {}", path.display())).map_err(secret)
}

/// "0,7,16" -> [0, 7, 16]: distinct SHA-256 PCR indices, sorted.
pub fn pcr_list(text: &str) -> Result<Vec<u32>, TpmError> {
    let bad = || TpmError::Arg {
        what: "--pcr",
        expected: "distinct PCR indices 0-23 separated by commas",
        found: text.to_owned(),
    };
    let mut out = Vec::new();
    for part in text.split(',') {
        let n: u32 = part.trim().parse().map_err(|_| bad())?;
        if n > vmattest_tpm::MAX_PCR || out.contains(&n) {
            return Err(bad());
        }
        out.push(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// A verifier's nonce: 1 to 64 bytes of hex.
pub fn nonce(text: &str) -> Result<Vec<u8>, TpmError> {
    match hex::decode(text) {
        Ok(n) if !n.is_empty() && n.len() <= 64 => Ok(n),
        _ => Err(TpmError::Arg {
            what: "--nonce",
            expected: "1 to 64 bytes of hex",
            found: text.to_owned(),
        }),
    }
}

/// `PUBKEY.certify`: where `tpm keygen` writes the key's certification.
pub fn certify_path(pubkey: &Path) -> PathBuf {
    let mut p = pubkey.as_os_str().to_owned();
    p.push(".certify");
    p.into()
}

/// What `tpm info` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub manufacturer: String,
    pub firmware_version: u64,
    pub pcr_banks: Vec<String>,
    pub ek_public: String,
    pub ek_certificate: Option<String>,
}

impl std::fmt::Display for Info {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TPM {} firmware {:#x}, PCR banks {}\n  EK (ECC P-256) {}\n  EK certificate: ",
            self.manufacturer,
            self.firmware_version,
            self.pcr_banks.join(", "),
            self.ek_public
        )?;
        match &self.ek_certificate {
            Some(c) => write!(f, "{} bytes (DER)", c.len() / 2),
            None => f.write_str("none provisioned"),
        }
    }
}

pub fn info() -> Result<Info, TpmError> {
    let mut tpm = open()?;
    let i = tpm.info()?;
    Ok(Info {
        manufacturer: i.manufacturer,
        firmware_version: i.firmware_version,
        pcr_banks: i.pcr_banks,
        ek_public: hex::encode(tpm.ek_public()?),
        ek_certificate: tpm.ek_certificate().map(hex::encode),
    })
}

/// Writes the TPM signing key's public key to `out` and its certification by the attestation
/// key (over a fresh nonce) to `OUT.certify`.
pub fn keygen(out: &Path) -> Result<vmattest_sign::PublicKey, TpmError> {
    // One connection at a time: the EK first, then the signer's own.
    let (ek, ek_certificate) = {
        let mut tpm = open()?;
        (
            hex::encode(tpm.ek_public()?),
            tpm.ek_certificate().map(hex::encode),
        )
    };
    let signer = signer()?;
    let key = signer.public_key();
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| TpmError::Random(e.to_string()))?;
    let c = signer.certify(&nonce)?;
    let cert = CertifyDoc {
        format: CERTIFY_FORMAT.into(),
        key: hex::encode(&signer.tpm_public().tpmt_public),
        attest: hex::encode(&c.attest),
        signature: hex::encode(c.signature.to_bytes()),
        nonce: hex::encode(nonce),
        ek,
        ek_certificate,
    };
    let text = serde_json::to_vec_pretty(&cert).map_err(|_| TpmError::Encode("certification"))?;
    vmattest_sign::keyfile::write_public_key(out, &key).map_err(|source| TpmError::KeyFile {
        path: out.to_path_buf(),
        source,
    })?;
    files::write_atomic(&certify_path(out), &text, "certification")?;
    Ok(key)
}

/// Writes the attestation key's public area to `out`; returns its TPM name.
pub fn write_ak(out: &Path) -> Result<Vec<u8>, TpmError> {
    let ak = open()?.attestation_key()?;
    files::write_atomic(out, &ak.tpmt_public, "attestation key")?;
    Ok(ak.name)
}

/// Extends `pcr` with the SHA-256 of `file`; returns the digest and the PCR's new value.
pub fn extend_file(pcr: u32, file: &Path) -> Result<([u8; 32], [u8; 32]), TpmError> {
    if pcr > vmattest_tpm::MAX_PCR {
        return Err(TpmError::Arg {
            what: "--pcr",
            expected: "a PCR index 0-23",
            found: pcr.to_string(),
        });
    }
    let bytes = files::read_capped(file, 1 << 30, "file to measure")?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let mut tpm = open()?;
    tpm.pcr_extend(pcr, &digest)?;
    let value = tpm
        .pcr_read(vmattest_tpm::PcrBank::Sha256, &[pcr])?
        .first()
        .copied()
        .unwrap_or_default();
    Ok((digest, value))
}

/// Seals the secret in `input` (at most 128 bytes) to the current values of `pcrs`.
pub fn seal_file(input: &Path, pcrs: &[u32], out: &Path) -> Result<(), TpmError> {
    let secret = zeroize::Zeroizing::new(files::read_capped(input, MAX_SECRET, "secret")?);
    let blob = open()?.seal(&secret, pcrs)?;
    let bytes = blob.to_bytes().map_err(vmattest_tpm::TpmError::from)?;
    files::write_atomic(out, &bytes, "sealed blob")?;
    Ok(())
}

/// Unseals `blob` into a new file of mode 0600.
pub fn unseal_file(blob: &Path, out: &Path) -> Result<(), TpmError> {
    let bytes = files::read_capped(blob, MAX_SEALED, "sealed blob")?;
    let sealed = SealedBlob::from_bytes(&bytes).map_err(|e| TpmError::Blob {
        path: blob.to_path_buf(),
        source: e.into(),
    })?;
    let secret = open()?.unseal(&sealed)?;
    files::ensure_absent(out, "an existing file with a secret")?;
    files::write_private(out, &secret, "unsealed secret")?;
    Ok(())
}
