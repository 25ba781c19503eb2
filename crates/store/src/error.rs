use std::path::PathBuf;

use vmattest_core::chain::{ObjectId, SeqNo};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_image::ImageError;

/// Store errors. Their classes: see [`Classify`] below.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: expected {expected}, found {found}")]
    FileType {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{path}: not a vmattest store (no store.json)")]
    NotAStore { path: PathBuf },
    #[error("{path}: exists and is not empty; expected a new store directory")]
    NotEmpty { path: PathBuf },
    #[error("{path}: another writer holds the store lock")]
    Locked { path: PathBuf },
    #[error("{file}: {detail}")]
    Corrupt { file: PathBuf, detail: String },
    #[error("{path}: {found} bytes, expected at most {max}")]
    TooLarge { path: PathBuf, max: u64, found: u64 },
    #[error("seq {seq}: link file is missing")]
    MissingLink { seq: SeqNo },
    #[error("seq {seq}: link is malformed: {detail}")]
    BadLink { seq: SeqNo, detail: String },
    #[error("seq {seq}: manifest is malformed: {detail}")]
    BadManifest { seq: SeqNo, detail: String },
    #[error("object {id} is missing")]
    MissingObject { id: ObjectId },
    #[error("object {id} at {path}: bytes do not hash to its name")]
    ObjectDigest { id: ObjectId, path: PathBuf },
    #[error("seq {seq}: {detail}")]
    Verification { seq: SeqNo, detail: String },
    #[error("seq {seq}, component {component}, page {page}: {detail}")]
    PageMismatch {
        seq: SeqNo,
        component: String,
        page: u64,
        detail: String,
    },
    #[error("{0}")]
    Input(String),
    #[error("{what}: {error}")]
    Image { what: String, error: ImageError },
    #[error("bundle {path}: {detail}")]
    Bundle { path: PathBuf, detail: String },
    #[error("store is encrypted: {0}")]
    Secret(String),
    /// The OS gave no randomness, or the cipher failed: nothing to do with the store's data.
    #[error("{0}")]
    Crypto(String),
}

impl Classify for StoreError {
    /// Every file below a store's root is committed by the signed chain (store.json through
    /// the manifests' metadata, HEAD through the link digest, the head cache through its
    /// checks), so a store file that is not what it should be fails verification. Files and
    /// arguments a caller hands in are input; the OS and other processes are the environment.
    fn class(&self) -> ErrorClass {
        match self {
            StoreError::Corrupt { .. }
            | StoreError::MissingLink { .. }
            | StoreError::BadLink { .. }
            | StoreError::BadManifest { .. }
            | StoreError::MissingObject { .. }
            | StoreError::ObjectDigest { .. }
            | StoreError::Verification { .. }
            | StoreError::PageMismatch { .. } => ErrorClass::Verification,
            StoreError::FileType { .. }
            | StoreError::NotAStore { .. }
            | StoreError::NotEmpty { .. }
            | StoreError::TooLarge { .. }
            | StoreError::Input(_)
            | StoreError::Bundle { .. }
            | StoreError::Secret(_) => ErrorClass::Input,
            StoreError::Io { .. } | StoreError::Locked { .. } | StoreError::Crypto(_) => {
                ErrorClass::Environment
            }
            StoreError::Image { error, .. } => error.class(),
        }
    }
}
