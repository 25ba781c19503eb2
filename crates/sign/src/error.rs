//! The crate's one error type.
//!
//! Messages are short and lowercase and say what was expected, what was found and where.
//! `origin` fields name where key text came from: `key file <path>` or `PEM text`.

use std::io;
use std::path::PathBuf;

use vmattest_core::class::{Classify, ErrorClass, io_class};
use vmattest_core::sig::{KeyId, SigAlg};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The OS random number generator failed.
    #[error("cannot get random bytes from the operating system")]
    Random(#[source] getrandom::Error),

    /// No valid private key came out of the OS randomness (P-384: 32 scalars out of range).
    #[error("{alg} key generation failed")]
    KeyGeneration { alg: SigAlg },

    /// The underlying signature implementation refused to sign.
    #[error("{alg} signing failed")]
    SigningFailed { alg: SigAlg },

    /// A signature has the wrong length for its algorithm.
    #[error("signature by {alg}: expected {expected} bytes, found {found}")]
    SignatureLength {
        alg: SigAlg,
        expected: usize,
        found: usize,
    },

    /// A signature of the right length does not verify.
    #[error("signature does not verify under {alg} key {key_id}")]
    BadSignature { alg: SigAlg, key_id: KeyId },

    /// Raw public key bytes have the wrong length.
    #[error("{alg} public key: expected {expected} bytes, found {found}")]
    PublicKeyLength {
        alg: SigAlg,
        expected: usize,
        found: usize,
    },

    /// Raw public key bytes of the right length are not a usable key.
    #[error("{alg} public key: expected {expected}")]
    InvalidPublicKey { alg: SigAlg, expected: &'static str },

    /// The text holds no PEM block, or text other than whitespace outside the blocks.
    #[error("{origin}: expected PEM text, found {found}")]
    NotPem { origin: String, found: String },

    /// A PEM block whose boundaries or base64 body are malformed.
    #[error("{origin}: PEM block {index} is malformed")]
    MalformedPem {
        origin: String,
        index: usize,
        #[source]
        source: pem_rfc7468::Error,
    },

    /// A public key where a private key was expected, or the other way round.
    #[error("{origin}: expected {expected}, found {found}")]
    WrongKeyType {
        origin: String,
        expected: &'static str,
        found: String,
    },

    /// A PEM label that is neither `PRIVATE KEY` nor `PUBLIC KEY`.
    #[error("{origin}: expected PEM label {expected}, found {found}")]
    UnsupportedPemLabel {
        origin: String,
        expected: &'static str,
        found: String,
    },

    /// The number or order of PEM blocks matches no key type.
    #[error("{origin}: expected {expected}, found {found}")]
    BlockLayout {
        origin: String,
        expected: &'static str,
        found: String,
    },

    /// The DER inside a PEM block is not a PKCS#8 `PrivateKeyInfo` / `SubjectPublicKeyInfo`.
    #[error("{origin}: PEM block {index} is not a valid {expected}")]
    MalformedDer {
        origin: String,
        index: usize,
        expected: &'static str,
        #[source]
        source: pkcs8::der::Error,
    },

    /// An algorithm OID this crate does not know.
    #[error("{origin}: unknown key algorithm OID {oid}")]
    UnknownAlgorithm { origin: String, oid: String },

    /// An EC key on a curve other than P-384.
    #[error("{origin}: expected EC curve secp384r1 (1.3.132.0.34), found {found}")]
    UnsupportedCurve { origin: String, found: String },

    /// A structurally valid PKCS#8 / SPKI document whose key material is invalid.
    #[error("{origin}: invalid {alg} {kind}: expected {expected}")]
    InvalidKey {
        origin: String,
        alg: SigAlg,
        kind: &'static str,
        expected: &'static str,
    },

    /// The key file does not exist.
    #[error("key file {path}: not found", path = path.display())]
    NotFound { path: PathBuf },

    /// The key file path names something other than a regular file.
    #[error("key file {path}: expected a regular file, found {found}", path = path.display())]
    NotAFile { path: PathBuf, found: &'static str },

    /// A secret key file that group or others may access.
    #[error(
        "key file {path}: mode {mode:04o} lets group or others access a private key; expected 0600",
        path = path.display()
    )]
    InsecureMode { path: PathBuf, mode: u32 },

    /// A key file larger than [`crate::keyfile::MAX_KEY_FILE_BYTES`].
    #[error("key file {path}: expected at most {limit} bytes, found {found}", path = path.display())]
    TooLarge {
        path: PathBuf,
        limit: u64,
        found: u64,
    },

    /// The target of a key write already exists.
    #[error("key file {path}: already exists; refusing to overwrite it", path = path.display())]
    AlreadyExists { path: PathBuf },

    /// Any other I/O failure, with the operation that failed.
    #[error("key file {path}: cannot {op}", path = path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl Classify for SignError {
    fn class(&self) -> ErrorClass {
        match self {
            SignError::Random(_)
            | SignError::KeyGeneration { .. }
            | SignError::SigningFailed { .. } => ErrorClass::Environment,
            // A signature of the wrong length is a bad signature: the envelope around it parsed.
            SignError::SignatureLength { .. } | SignError::BadSignature { .. } => {
                ErrorClass::Verification
            }
            SignError::PublicKeyLength { .. }
            | SignError::InvalidPublicKey { .. }
            | SignError::NotPem { .. }
            | SignError::MalformedPem { .. }
            | SignError::WrongKeyType { .. }
            | SignError::UnsupportedPemLabel { .. }
            | SignError::BlockLayout { .. }
            | SignError::MalformedDer { .. }
            | SignError::UnknownAlgorithm { .. }
            | SignError::UnsupportedCurve { .. }
            | SignError::InvalidKey { .. }
            | SignError::NotFound { .. }
            | SignError::NotAFile { .. }
            | SignError::TooLarge { .. }
            | SignError::AlreadyExists { .. } => ErrorClass::Input,
            // The caller must fix the file's mode; nothing failed in the environment.
            SignError::InsecureMode { .. } => ErrorClass::Input,
            SignError::Io { source, .. } => io_class(source.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::keyfile::{read_public_key, read_secret_key, write_secret_key};
    use crate::{PublicKey, SecretKey, Signer as _};

    #[test]
    fn malformed_truncated_and_missing_key_files_are_input() {
        let e = PublicKey::from_pem("not a key").unwrap_err();
        assert!(matches!(e, SignError::NotPem { .. }));
        assert_eq!(e.class(), ErrorClass::Input);

        let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let pem = key.public_key().to_pem();
        let cut = &pem[..pem.len() / 2];
        assert_eq!(
            PublicKey::from_pem(cut).unwrap_err().class(),
            ErrorClass::Input
        );

        let dir = tempfile::tempdir().unwrap();
        let e = read_public_key(&dir.path().join("absent.pub")).unwrap_err();
        assert!(matches!(e, SignError::NotFound { .. }));
        assert_eq!(e.class(), ErrorClass::Input);
    }

    #[test]
    fn a_world_readable_private_key_is_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_secret_key(&path, &SecretKey::generate(SigAlg::Ed25519).unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret_key(&path).unwrap_err();
        assert!(matches!(e, SignError::InsecureMode { .. }));
        assert_eq!(e.class(), ErrorClass::Input);
    }

    #[test]
    fn os_failures_are_environment() {
        let e = SignError::Io {
            path: "k".into(),
            op: "write",
            source: io::Error::from(io::ErrorKind::StorageFull),
        };
        assert_eq!(e.class(), ErrorClass::Environment);
    }
}
