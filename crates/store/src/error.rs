use std::path::PathBuf;

use vmattest_core::chain::{ObjectId, SeqNo};

/// Store errors. `Verification` variants mean the data is not what the chain says.
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
    #[error("{what}: {detail}")]
    Image { what: String, detail: String },
    #[error("bundle {path}: {detail}")]
    Bundle { path: PathBuf, detail: String },
    #[error("store is encrypted: {0}")]
    Secret(String),
}

impl StoreError {
    /// True when the failure is a mismatch between stored data and its signed commitments,
    /// rather than bad input or an I/O problem.
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            StoreError::Verification { .. }
                | StoreError::PageMismatch { .. }
                | StoreError::ObjectDigest { .. }
                | StoreError::BadLink { .. }
                | StoreError::BadManifest { .. }
                | StoreError::MissingObject { .. }
                | StoreError::MissingLink { .. }
        )
    }
}
