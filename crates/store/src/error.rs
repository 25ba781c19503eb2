use std::path::PathBuf;

use vmattest_core::alg::{Digest, PageIndex};
use vmattest_core::chain::{KeyError, ObjectId, SeqNo};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::{RecordError, UnixTime};
use vmattest_core::sig::KeyId;
use vmattest_core::tree::TreeError;
use vmattest_image::ImageError;
use vmattest_sign::record::RecordSigError;

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
    #[error("seq {seq}: {broken}")]
    Verification { seq: SeqNo, broken: Broken },
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

/// What the verification of one link found wrong ([`StoreError::Verification`]). Each
/// variant's text carries its cause, so that one line tells the whole story.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    #[error("link does not match the digest in HEAD")]
    HeadDigest,
    #[error(
        "rebase: its embedded link is not the chain's link at its seq, or its algorithm is not the store's"
    )]
    Rebase,
    #[error("the head manifest changed while it was read")]
    HeadChanged,
    #[error("link says seq {0}")]
    LinkSeq(SeqNo),
    #[error("link {0}")]
    Signature(RecordSigError),
    #[error("signing keys: {0}")]
    Keys(KeyError),
    #[error("rebase's key link of seq {seq}: {cause}")]
    KeyLink { seq: SeqNo, cause: Box<Broken> },
    #[error("rebase {0}")]
    RebaseSignature(RecordSigError),
    #[error("announced key {key}: {detail}")]
    AnnouncedKey { key: KeyId, detail: String },
    #[error("revocation {file}: {detail}")]
    Revocation { file: String, detail: String },
    #[error("previous link digest {found}, expected {expected}")]
    Prev { found: Digest, expected: Digest },
    #[error("time {found} is before the previous link's {prev}")]
    Time { found: UnixTime, prev: UnixTime },
    #[error("manifest: {0}")]
    ManifestObject(Box<StoreError>),
    #[error("manifest: {0}")]
    ManifestDecode(RecordError),
    #[error("manifest seq or time differs from its link")]
    ManifestMeta,
    #[error("manifest is for VM {found:?}, this store holds {expected:?}")]
    VmId { found: String, expected: String },
    #[error("manifest uses tree {found}, this store uses {expected}")]
    Params { found: String, expected: String },
    #[error("manifest has policy {found:?}, this store has {expected:?}")]
    Policy { found: String, expected: String },
    #[error("components differ from the baseline's")]
    Components,
    #[error("delta digest: the manifest's page entries do not hash to the link's")]
    Delta,
    #[error("state root: the manifest's components do not hash to the link's")]
    StateRoot,
    #[error("component {component}: page digests give root {found}, the link says {expected}")]
    Root {
        component: String,
        found: Digest,
        expected: Digest,
    },
    #[error("page digests: {0}")]
    Tree(TreeError),
    #[error(
        "component {component}, page {page}: the anchor carries it as unchanged, but its digest differs from the previous seq's"
    )]
    Carried { component: String, page: PageIndex },
    #[error("head is {age} s old, expected at most {max} s")]
    TooOld { age: u64, max: u64 },
    #[error("component {component}, page {page}: batch holds too few bytes")]
    ShortBatch { component: String, page: PageIndex },
    #[error("component {component}, pages from {page}: {cause}")]
    BatchObject {
        component: String,
        page: u64,
        cause: Box<StoreError>,
    },
    #[error("component {component}, pages from {page}: batch {object}: {detail}")]
    Batch {
        component: String,
        page: u64,
        object: ObjectId,
        detail: String,
    },
    #[error("batch {object}: {detail}")]
    BatchHeader { object: ObjectId, detail: String },
}
