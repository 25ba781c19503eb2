//! Who signs: key files or the host TPM's resident key; which public keys a verifier pins.

use std::path::{Path, PathBuf};

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::sig::SigAlg;
use vmattest_sign::{PublicKey, SecretKey, SignError, Signer, keyfile};

use crate::files::{self, FileError};
use crate::report::KeyJson;
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
    #[error("--alg {0:?}: unknown key algorithm, expected ed25519, p384, ml-dsa-65 or hybrid")]
    UnknownAlg(String),
    #[error(transparent)]
    Exists(#[from] FileError),
}

impl Classify for KeyError {
    fn class(&self) -> ErrorClass {
        match self {
            KeyError::File { source, .. } => source.class(),
            KeyError::Tpm(e) => e.class(),
            KeyError::Exists(e) => e.class(),
            KeyError::NoSigner | KeyError::NoPinnedKey | KeyError::UnknownAlg(_) => {
                ErrorClass::Input
            }
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
pub fn read_secret(path: &Path) -> Result<SecretKey, KeyError> {
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

/// Generates a key pair of algorithm `alg` (by name) from OS randomness: the private key at
/// `out` (mode 0600), the public key at `out.pub`. Neither file may exist.
pub fn generate(alg: &str, out: &Path) -> Result<KeyJson, KeyError> {
    let alg = SigAlg::from_name(alg).ok_or_else(|| KeyError::UnknownAlg(alg.to_owned()))?;
    let pub_path = public_path(out);
    files::ensure_absent(out, "a key")?;
    files::ensure_absent(&pub_path, "a key")?;
    let file = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::File { path, source }
    };
    let key = SecretKey::generate(alg).map_err(file(out))?;
    keyfile::write_secret_key(out, &key).map_err(file(out))?;
    keyfile::write_public_key(&pub_path, &key.public_key()).map_err(file(&pub_path))?;
    Ok(KeyJson {
        alg: alg.name(),
        key_id: key.key_id().to_hex(),
        secret: Some(out.display().to_string()),
        public: Some(pub_path.display().to_string()),
    })
}
