//! The snapshot store on a local file system.
//!
//! ```text
//! STORE/store.json            format, VM id, tree algorithm and salt, policy id, encryption
//! STORE/LOCK                  exclusive lock held by every writer (take, import, repair)
//! STORE/HEAD                  {"seq": N, "link": "<link digest>"}: the commit point
//! STORE/links/<seq>.link      signed links, seq zero-padded to 20 digits
//! STORE/links/<seq>.rebase    the signed rebase the chain starts with, after a prune
//! STORE/revocations/<id>.rev  signed key revocations, named by the BLAKE3 of their bytes
//! STORE/objects/ab/cdef...    content-addressed objects (manifests, page batches)
//! STORE/head/                 derived cache of the head state, rebuilt from the chain if stale
//! STORE/tmp/                  scratch space for imports and verification
//! ```
//!
//! Every access below the root is relative to the open store directory and never follows a
//! symlink or opens a special file (see `dir`); directories are 0700 and files 0600.
//! Every file is written to a temporary name, fsynced, renamed into place and its directory
//! fsynced. A take or import becomes visible only when HEAD is replaced, so a crash at any
//! point leaves the previous head intact; leftovers are unreferenced objects that `fsck`
//! reports and `fsck --repair` removes.

mod anchor;
mod batch;
mod bundle;
mod cache;
mod cachefiles;
mod crypt;
mod dir;
mod error;
mod frames;
mod fsck;
mod fsio;
mod keys;
mod pages;
mod prune;
mod rebuild;
mod replay;
mod take;

use std::fs::File;
use std::path::{Path, PathBuf};

use dir::{Access, Dir};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use vmattest_core::alg::{Digest, HashAlg};
use vmattest_core::chain::{
    Link, Manifest, ObjectId, SeqNo, SignedLink, SignedRebase, link_digest,
};
use vmattest_core::record::{Signable, Signed};
use vmattest_core::tree::{NoProgress, Progress, TreeParams};
use vmattest_core::wire::{HEADER_LEN, Kind};

pub use anchor::DEFAULT_ANCHOR_EVERY;
pub use batch::{BATCH_PAGES, BatchCodec, decode_plain as decode_plain_batch};
pub use bundle::{BundleHeader, BundleReader, Frame, ImportSummary};
/// The head cache's base diff codec, for fuzzing (docs/FORMAT.md).
pub use cachefiles::{BaseDiff, apply_base_diff, encode_base_diff, parse_base_diff};
pub use crypt::StoreSecret;
pub use error::{Broken, StoreError};
pub use fsck::FsckReport;
pub use fsio::{write_atomic, write_atomic_private};
pub use keys::{MAX_REVOCATIONS, NamedRevocation};
pub use prune::{PruneOptions, PruneSummary};
pub use replay::{PinnedKeys, ReplayOptions, Verified};
pub use take::{ComponentInput, Frozen, Hold, Quiescent, TakeOptions, TakeSummary};

/// Version of the store layout.
pub const STORE_FORMAT: u32 = 2;

/// What `store.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreMeta {
    pub format: u32,
    pub vm_id: String,
    pub alg: String,
    pub salt: String,
    pub policy_id: String,
    pub encrypted: bool,
    /// Whether `head/` keeps the head's images (for XOR deltas and fast head restores) or
    /// only its page digests. Written only when off, so older stores read as on.
    #[serde(default = "keeps_head_images", skip_serializing_if = "is_on")]
    pub head_cache: bool,
    /// Every how many seqs a link is an anchor (0: only on demand). Absent in older stores.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub anchor_every: u32,
}

fn is_zero32(v: &u32) -> bool {
    *v == 0
}

fn keeps_head_images() -> bool {
    true
}

fn is_on(on: &bool) -> bool {
    *on
}

impl StoreMeta {
    pub fn params(&self) -> Result<TreeParams, StoreError> {
        let bad = |what: &str| StoreError::Corrupt {
            file: "store.json".into(),
            detail: what.to_owned(),
        };
        let alg = HashAlg::from_name(&self.alg).ok_or_else(|| bad("unknown tree algorithm"))?;
        let salt = hex::decode(&self.salt).map_err(|_| bad("salt is not hex"))?;
        TreeParams::new(alg, &salt).map_err(|e| bad(&e.to_string()))
    }
}

/// The commit point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: SeqNo,
    pub link: Digest,
    /// The chain's first seq: 0, or the seq of its newest rebase (`prune`).
    pub base: SeqNo,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadJson {
    seq: u64,
    link: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    base: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A store opened for reading: it verifies, restores, exports and checks, and has no method
/// that changes the store (readers need no lock: HEAD moves only by atomic rename).
///
/// A writer can take and repair:
///
/// ```
/// use vmattest_store::{ComponentInput, StoreWriter, TakeOptions};
/// fn write(w: &StoreWriter, i: &[ComponentInput], o: &TakeOptions<'_>) {
///     let _ = w.take(i, o);
///     let _ = w.repair();
/// }
/// ```
///
/// A reader cannot:
///
/// ```compile_fail
/// use vmattest_store::{ComponentInput, Store, TakeOptions};
/// fn write(r: &Store, i: &[ComponentInput], o: &TakeOptions<'_>) {
///     let _ = r.take(i, o);
/// }
/// ```
///
/// ```compile_fail
/// fn write(r: &vmattest_store::Store) {
///     let _ = r.repair();
/// }
/// ```
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    dir: Dir,
    meta: StoreMeta,
    params: TreeParams,
    progress: Reporter,
}

/// A store opened for writing: holds the writer lock (`STORE/LOCK`) for its lifetime. Only a
/// writer takes, imports or repairs; it reads like a [`Store`].
#[derive(Debug)]
pub struct StoreWriter {
    store: Store,
    _lock: File,
}

impl std::ops::Deref for StoreWriter {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

/// Where long operations report progress (nowhere by default).
pub struct Reporter(Box<dyn Progress + Send>);

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

impl Default for Reporter {
    fn default() -> Reporter {
        Reporter(Box::new(NoProgress))
    }
}

impl StoreWriter {
    /// Reports progress of replays (imports, cache rebuilds) to `p`.
    pub fn set_progress(&mut self, p: Box<dyn Progress + Send>) {
        self.store.set_progress(p);
    }

    pub(crate) fn set_head(&self, head: Head) -> Result<(), StoreError> {
        let json = serde_json::to_vec(&HeadJson {
            seq: head.seq.0,
            link: head.link.to_hex(),
            base: head.base.0,
        })
        .map_err(|e| StoreError::Corrupt {
            file: "HEAD".into(),
            detail: e.to_string(),
        })?;
        self.dir.write_file(Path::new("HEAD"), &json, true)
    }

    /// Writes an object under its content address (no-op if present). The file is durable on
    /// return; its directory entry is made durable by [`StoreWriter::sync_object_dirs`], which every
    /// writer calls before it refers to the object from anything committed.
    pub(crate) fn write_object(&self, bytes: &[u8]) -> Result<ObjectId, StoreError> {
        let id = ObjectId::of(bytes);
        let hex = id.to_hex();
        // One walk to the object's directory serves the check and the write (a take writes
        // every batch through here).
        let dir = self
            .dir
            .create_dir_all(&Path::new("objects").join(&hex[..2]))?;
        let name = Path::new(&hex[2..]);
        if !dir.file_exists(name)? {
            dir.write_file(name, bytes, false)?;
        }
        Ok(id)
    }

    pub(crate) fn sync_object_dir(&self, id: &ObjectId) -> Result<(), StoreError> {
        match self.object_path(id).parent() {
            Some(dir) => self.dir.open_dir(dir)?.sync(),
            None => Ok(()),
        }
    }

    /// fsyncs every object directory (256 at most): one pass instead of one per object.
    pub(crate) fn sync_object_dirs(&self) -> Result<(), StoreError> {
        let objects = self.dir.open_dir(Path::new("objects"))?;
        let dirs: Vec<String> = objects
            .entries()?
            .into_iter()
            .filter(|(_, t)| *t == rustix::fs::FileType::Directory)
            .map(|(n, _)| n)
            .collect();
        dirs.par_iter()
            .try_for_each(|d| objects.open_dir(Path::new(d))?.sync())?;
        objects.sync()
    }
}

impl Store {
    /// Creates an empty store at `root` (which must not exist or be empty).
    pub fn init(root: &Path, meta: StoreMeta) -> Result<Store, StoreError> {
        // The caller's metadata, not a store file yet: a bad one is input.
        meta.params()
            .map_err(|e| StoreError::Input(e.to_string()))?;
        if !root.exists() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(fsio::io(root))?;
        }
        let dir = Dir::open_root(root)?;
        if !dir.entries()?.is_empty() {
            return Err(StoreError::NotEmpty {
                path: root.to_path_buf(),
            });
        }
        dir.make_private()?;
        for d in ["links", "objects", "head", "tmp"] {
            dir.create_dir_all(Path::new(d))?;
        }
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| StoreError::Corrupt {
            file: "store.json".into(),
            detail: e.to_string(),
        })?;
        dir.write_file(Path::new("store.json"), &json, true)?;
        Store::open(root)
    }

    /// Opens a store for reading (no lock).
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let path = root.join("store.json");
        let dir = match Dir::open_root(root) {
            Err(StoreError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotAStore {
                    path: root.to_path_buf(),
                });
            }
            other => other?,
        };
        if !dir.file_exists(Path::new("store.json"))? {
            return Err(StoreError::NotAStore {
                path: root.to_path_buf(),
            });
        }
        let bytes = dir.read_capped(Path::new("store.json"), 64 * 1024)?;
        let meta: StoreMeta = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            file: path.clone(),
            detail: e.to_string(),
        })?;
        if meta.format != STORE_FORMAT {
            return Err(StoreError::Corrupt {
                file: path,
                detail: format!("store format {}, expected {STORE_FORMAT}", meta.format),
            });
        }
        let params = meta.params()?;
        Ok(Store {
            root: root.to_path_buf(),
            dir,
            meta,
            params,
            progress: Reporter::default(),
        })
    }

    /// Opens a store for writing: waits for no one, fails if another writer holds the lock.
    pub fn open_writer(root: &Path) -> Result<StoreWriter, StoreError> {
        let store = Store::open(root)?;
        let lock_path = root.join("LOCK");
        let lock = Path::new("LOCK");
        let f = match store.dir.open_file(lock, Access::Write) {
            Err(StoreError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                match store.dir.open_file(lock, Access::CreateNew) {
                    Err(StoreError::Io { error, .. })
                        if error.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        store.dir.open_file(lock, Access::Write)?
                    }
                    other => other?,
                }
            }
            other => other?,
        };
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fsio::io(&lock_path)(e)),
        }
        // Stores made before files were private, or by hand: guest bytes are not for others.
        store.dir.make_private()?;
        for d in ["links", "objects", "head", "tmp"] {
            store.dir.create_dir_all(Path::new(d))?.make_private()?;
        }
        Ok(StoreWriter { store, _lock: f })
    }

    /// Reports progress of replays (verify, restore, import, cache rebuilds) to `p`.
    pub fn set_progress(&mut self, p: Box<dyn Progress + Send>) {
        self.progress = Reporter(p);
    }

    pub(crate) fn progress(&self) -> &dyn Progress {
        self.progress.0.as_ref()
    }

    pub fn meta(&self) -> &StoreMeta {
        &self.meta
    }

    pub fn params(&self) -> &TreeParams {
        &self.params
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The commit point; `None` only for a store that holds no link at all (a store with
    /// links and no HEAD is damaged, never empty).
    pub fn head(&self) -> Result<Option<Head>, StoreError> {
        let path = self.root.join("HEAD");
        if !self.dir.file_exists(Path::new("HEAD"))? {
            let links = self.dir.open_dir(Path::new("links"))?.entries()?;
            let count = links.iter().filter(|(n, _)| n.ends_with(".link")).count();
            if count > 0 {
                return Err(StoreError::Corrupt {
                    file: path,
                    detail: format!(
                        "missing, but links/ holds {count} links; expected HEAD to name the newest"
                    ),
                });
            }
            return Ok(None);
        }
        let bytes = self.dir.read_capped(Path::new("HEAD"), 4096)?;
        let bad = |detail: String| StoreError::Corrupt {
            file: path.clone(),
            detail,
        };
        let h: HeadJson = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let raw = hex::decode(&h.link).map_err(|_| bad("link digest is not hex".into()))?;
        let link = Digest::new(self.params.alg(), &raw)
            .ok_or_else(|| bad("link digest has the wrong length".into()))?;
        if h.base > h.seq {
            return Err(bad(format!(
                "base seq {} is past head seq {}; expected base <= seq",
                h.base, h.seq
            )));
        }
        Ok(Some(Head {
            seq: SeqNo(h.seq),
            link,
            base: SeqNo(h.base),
        }))
    }

    /// The head's components; empty for a store that holds no link.
    pub fn head_components(&self) -> Result<Vec<vmattest_core::chain::ComponentRoot>, StoreError> {
        match self.head()? {
            Some(h) => Ok(self.manifest_at(&h, h.seq)?.components),
            None => Ok(Vec::new()),
        }
    }

    /// The rebase the chain starts with; `None` for a chain that starts at seq 0.
    pub fn rebase(&self, head: &Head) -> Result<Option<SignedRebase>, StoreError> {
        if head.base.0 == 0 {
            return Ok(None);
        }
        self.read_rebase(head.base).map(Some)
    }

    /// Reads and decodes the rebase at `seq` (no signature check).
    pub fn read_rebase(&self, seq: SeqNo) -> Result<SignedRebase, StoreError> {
        let r: SignedRebase = self.read_signed(&self.rebase_path(seq), seq)?;
        if r.value().seq() != seq {
            return Err(StoreError::BadLink {
                seq,
                detail: format!("a rebase of seq {}", r.value().seq()),
            });
        }
        Ok(r)
    }

    /// The seq-0 state root, which salts an encrypted store's keys (a rebase carries it).
    pub(crate) fn origin_root(&self, head: &Head) -> Result<Digest, StoreError> {
        match self.rebase(head)? {
            Some(r) => Ok(r.value().origin_root),
            None => Ok(self.read_link(SeqNo(0))?.value().state_root),
        }
    }

    /// A link's file, relative to the store's root.
    fn link_path(&self, seq: SeqNo) -> PathBuf {
        PathBuf::from(format!("links/{:020}.link", seq.0))
    }

    /// A rebase's file, relative to the store's root.
    fn rebase_path(&self, seq: SeqNo) -> PathBuf {
        PathBuf::from(format!("links/{:020}.rebase", seq.0))
    }

    /// An object's file, relative to the store's root.
    fn object_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        PathBuf::from(format!("objects/{}/{}", &hex[..2], &hex[2..]))
    }

    /// Reads and decodes the signed link at `seq` (no signature check).
    pub fn read_link(&self, seq: SeqNo) -> Result<SignedLink, StoreError> {
        self.read_signed(&self.link_path(seq), seq)
    }

    /// A signed link or rebase of seq `seq` at `path`.
    fn read_signed<T: Signable>(&self, path: &Path, seq: SeqNo) -> Result<Signed<T>, StoreError> {
        if !self.dir.file_exists(path)? {
            return Err(StoreError::MissingLink { seq });
        }
        let bytes = self
            .dir
            .read_capped(path, Kind::Signed.max_body() + HEADER_LEN)?;
        Signed::<T>::decode(&bytes).map_err(|e| StoreError::BadLink {
            seq,
            detail: e.to_string(),
        })
    }

    /// Reads an object and checks that its bytes hash to its id.
    pub fn read_object(&self, id: &ObjectId, max: usize) -> Result<Vec<u8>, StoreError> {
        let path = self.object_path(id);
        if !self.dir.file_exists(&path)? {
            return Err(StoreError::MissingObject { id: *id });
        }
        let bytes = self.dir.read_capped(&path, max)?;
        if ObjectId::of(&bytes) != *id {
            return Err(StoreError::ObjectDigest {
                id: *id,
                path: self.dir.display(&path),
            });
        }
        Ok(bytes)
    }

    pub fn read_manifest(&self, link: &Link) -> Result<Manifest, StoreError> {
        self.manifest_by_id(&link.manifest, link.seq)
    }

    /// The manifest of `seq`: at a pruned chain's first seq, its rebase's full manifest.
    pub fn manifest_at(&self, head: &Head, seq: SeqNo) -> Result<Manifest, StoreError> {
        let id = self.manifest_id(self.rebase(head)?.as_ref(), seq)?;
        self.manifest_by_id(&id, seq)
    }

    /// The object id of seq `seq`'s manifest in a chain that starts with `rebase`.
    pub(crate) fn manifest_id(
        &self,
        rebase: Option<&SignedRebase>,
        seq: SeqNo,
    ) -> Result<ObjectId, StoreError> {
        match rebase {
            Some(r) if r.value().seq() == seq => Ok(r.value().manifest),
            _ => Ok(self.read_link(seq)?.value().manifest),
        }
    }

    /// Reads and decodes the manifest `id` of seq `seq`.
    pub(crate) fn manifest_by_id(&self, id: &ObjectId, seq: SeqNo) -> Result<Manifest, StoreError> {
        let bytes = self.read_object(id, Kind::Manifest.max_body() + HEADER_LEN)?;
        Manifest::decode(&bytes).map_err(|e| StoreError::BadManifest {
            seq,
            detail: e.to_string(),
        })
    }

    /// The links from the chain's first seq to the head, decoded but not verified.
    pub fn log(&self) -> Result<Vec<SignedLink>, StoreError> {
        let Some(head) = self.head()? else {
            return Ok(Vec::new());
        };
        (head.base.0..=head.seq.0)
            .map(|s| self.read_link(SeqNo(s)))
            .collect()
    }

    /// Digest of the link at `seq` as stored.
    pub fn link_digest_at(&self, seq: SeqNo) -> Result<Digest, StoreError> {
        Ok(link_digest(&self.read_link(seq)?))
    }

    fn tmp_dir(&self, label: &str) -> Result<dir::TempDir, StoreError> {
        dir::TempDir::new_in(self.dir.create_dir_all(Path::new("tmp"))?, label)
    }

    /// Refuses a `store.json` that no longer matches the signed chain (edited to make a
    /// take append links for another VM, or to flip encryption): the manifest's signed
    /// metadata, and the sealed flag of one of its batches, must agree with it.
    pub(crate) fn check_meta_bound(&self, m: &Manifest) -> Result<(), StoreError> {
        let file = self.root.join("store.json");
        let bad = |detail: String| StoreError::Corrupt {
            file: file.clone(),
            detail,
        };
        if m.meta.vm_id != self.meta.vm_id {
            return Err(bad(format!(
                "names VM {:?}, the signed chain is for {:?}",
                self.meta.vm_id, m.meta.vm_id
            )));
        }
        if m.meta.params != self.params || m.meta.policy_id != self.meta.policy_id {
            return Err(bad(
                "tree, salt or policy differ from the signed chain's".into()
            ));
        }
        if let Some(b) = m.batches.first() {
            let bytes = self.read_object(&b.object, Kind::Batch.max_body() + HEADER_LEN)?;
            let sealed = batch::is_sealed(&bytes).map_err(|detail| StoreError::Verification {
                seq: m.meta.seq,
                broken: Broken::BatchHeader {
                    object: b.object,
                    detail,
                },
            })?;
            if sealed != self.meta.encrypted {
                return Err(bad(format!(
                    "says encrypted = {}, the signed chain's batches are {}",
                    self.meta.encrypted,
                    if sealed { "encrypted" } else { "plain" }
                )));
            }
        }
        Ok(())
    }
}
