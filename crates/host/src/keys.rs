//! Who signs: key files or the host TPM's resident key; which public keys a verifier pins.

use std::path::{Path, PathBuf};

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_sign::{PublicKey, SignError, Signer, keyfile};

use crate::tpm::{self, TpmError};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}")]
    File {
        path: PathBuf,
        #[source]
        source: SignError,
    },
    #[error("the TPM signing key")]
    Tpm(#[source] TpmError),
    #[error("no signer: expected a key file or the TPM")]
    NoSigner,
    #[error("no public key pinned: expected at least one")]
    NoPinnedKey,
}

impl Classify for KeyError {
    fn class(&self) -> ErrorClass {
        match self {
            KeyError::File { source, .. } => source.class(),
            KeyError::Tpm(e) => e.class(),
            KeyError::NoSigner | KeyError::NoPinnedKey => ErrorClass::Input,
        }
    }
}

/// The signer of evidence, reports and configuration statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerChoice {
    KeyFile(PathBuf),
    Tpm,
}

/// Opens one signer.
pub fn signer(choice: &SignerChoice) -> Result<Box<dyn Signer>, KeyError> {
    match choice {
        SignerChoice::KeyFile(path) => Ok(Box::new(read_secret(path)?)),
        SignerChoice::Tpm => Ok(Box::new(tpm::signer().map_err(KeyError::Tpm)?)),
    }
}

/// The signers of a take: key files, plus the TPM-resident key with `tpm`.
pub fn signers(keys: &[PathBuf], tpm: bool) -> Result<Vec<Box<dyn Signer>>, KeyError> {
    let mut out: Vec<Box<dyn Signer>> = Vec::with_capacity(keys.len() + 1);
    for k in keys {
        out.push(Box::new(read_secret(k)?));
    }
    if tpm {
        out.push(Box::new(tpm::signer().map_err(KeyError::Tpm)?));
    }
    if out.is_empty() {
        return Err(KeyError::NoSigner);
    }
    Ok(out)
}

/// A private key file (mode 0600 or stricter).
pub fn read_secret(path: &Path) -> Result<vmattest_sign::SecretKey, KeyError> {
    keyfile::read_secret_key(path).map_err(|source| KeyError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// A public key file.
pub fn read_public(path: &Path) -> Result<PublicKey, KeyError> {
    keyfile::read_public_key(path).map_err(|source| KeyError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// The keys a verifier pins: at least one.
pub fn pinned(paths: &[PathBuf]) -> Result<Vec<PublicKey>, KeyError> {
    if paths.is_empty() {
        return Err(KeyError::NoPinnedKey);
    }
    paths.iter().map(|p| read_public(p)).collect()
}

/// `PATH.pub` beside a private key at `PATH`.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}
