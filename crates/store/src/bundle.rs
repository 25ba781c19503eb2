//! Bundles: one file carrying links a..=b and every object they reference, for migration.
//!
//! ```text
//! header   envelope kind 7 (bundle), version 2, body:
//!            store meta (JSON) bytes32 | first seq u64 | last seq u64
//! frame*   tag u8 (1 link, 2 object, 3 rebase, 4 revocation) | len u32 | bytes
//! trailer  tag u8 = 0xff | BLAKE3 of every byte before the trailer [32]
//! ```
//!
//! Frames come in export order: a link, its manifest, the manifest's batches, the next link;
//! then the key revocations the store keeps (version 2), which the import honours and keeps.
//! A bundle of a pruned chain from its first seq opens with the chain's rebase instead of a
//! link; it imports only into an empty store.
//! Import streams each object frame to `tmp/` (bounded memory; a frame longer than the object
//! expected there is refused before it is read) and refuses any object that is not the one the
//! chain names next, so nothing unsigned is kept. It then verifies the whole chain (signatures
//! against pinned keys, links, manifests, every page) and only then moves objects and links
//! into place and replaces HEAD. A partial or corrupt bundle leaves the store as it was, and a
//! refused import removes only what it created.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use vmattest_core::chain::{Manifest, ObjectId, SeqNo, SignedLink, SignedRebase, link_digest};
use vmattest_core::wire::{HEADER_LEN, Kind, Writer};

use crate::dir::{Dir, TempDir};
pub use crate::frames::{BundleHeader, BundleReader, Frame};
use crate::frames::{TAG_END, TAG_LINK, TAG_OBJECT, TAG_REBASE, TAG_REVOCATION, frame};
use crate::keys::NamedRevocation;
use crate::replay::{Outputs, ReplayOptions, Source, Verified};
use crate::{Head, Store, StoreError, StoreWriter, fsio};

const MAX_FRAME: usize = Kind::Manifest.max_body() + HEADER_LEN;
/// More links than any real chain between two exports; bounds what a header can ask for.
const MAX_BUNDLE_LINKS: u64 = 1 << 24;

/// What an import added.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub first: SeqNo,
    pub last: SeqNo,
    pub new_links: u64,
    pub objects: u64,
    pub verified: Verified,
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// Writes links `first..=last` and their objects to `out` (atomically).
    pub fn export(
        &self,
        first: SeqNo,
        last: Option<SeqNo>,
        out: &Path,
    ) -> Result<(u64, u64), StoreError> {
        let head = self
            .head()?
            .ok_or_else(|| StoreError::Input("the store has no snapshots yet".into()))?;
        let last = last.unwrap_or(head.seq);
        if first > last || last > head.seq || first < head.base {
            return Err(StoreError::Input(format!(
                "seq range {first}..={last}: the store holds {}..={}",
                head.base, head.seq
            )));
        }
        let rebase = self.rebase(&head)?.filter(|r| r.value().seq() == first);
        let meta = serde_json::to_vec(&self.meta).map_err(|e| StoreError::Input(e.to_string()))?;
        let mut header = Writer::new();
        header.bytes(&meta).u64(first.0).u64(last.0);
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            out.file_name()
                .map_or("bundle".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        let io = fsio::io(out);
        let result = (|| -> Result<(u64, u64), StoreError> {
            // Bundles carry guest pages: private from creation, never a planted file.
            let f = {
                use std::os::unix::fs::OpenOptionsExt as _;
                let _ = std::fs::remove_file(&tmp);
                File::options()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(fsio::io(&tmp))?
            };
            let mut w = HashingWriter {
                inner: BufWriter::new(f),
                hash: blake3::Hasher::new(),
            };
            let wio = |e| StoreError::Io {
                path: tmp.clone(),
                error: e,
            };
            w.write_all(&header.envelope(Kind::Bundle)).map_err(wio)?;
            let (mut links, mut objects) = (0u64, 0u64);
            for s in first.0..=last.0 {
                let link = self.read_link(SeqNo(s))?;
                let encode = |r: Result<Vec<u8>, _>| {
                    r.map_err(|e: vmattest_core::record::RecordError| {
                        StoreError::Input(e.to_string())
                    })
                };
                let manifest_id = match &rebase {
                    Some(r) if s == first.0 => {
                        frame(&mut w, TAG_REBASE, &encode(r.encode())?).map_err(wio)?;
                        r.value().manifest
                    }
                    _ => {
                        frame(&mut w, TAG_LINK, &encode(link.encode())?).map_err(wio)?;
                        link.value().manifest
                    }
                };
                links += 1;
                let manifest_bytes = self.read_object(&manifest_id, MAX_FRAME)?;
                let manifest =
                    Manifest::decode(&manifest_bytes).map_err(|e| StoreError::BadManifest {
                        seq: link.value().seq,
                        detail: e.to_string(),
                    })?;
                frame(&mut w, TAG_OBJECT, &manifest_bytes).map_err(wio)?;
                objects += 1;
                for b in &manifest.batches {
                    let bytes = self.read_object(&b.object, MAX_FRAME)?;
                    frame(&mut w, TAG_OBJECT, &bytes).map_err(wio)?;
                    self.progress().advance(bytes.len() as u64);
                    objects += 1;
                }
            }
            for (_, r) in self.revocations()? {
                let bytes = r.encode().map_err(|e| StoreError::Input(e.to_string()))?;
                frame(&mut w, TAG_REVOCATION, &bytes).map_err(wio)?;
            }
            let digest = w.hash.finalize();
            let mut f = w.inner.into_inner().map_err(|e| StoreError::Io {
                path: tmp.clone(),
                error: e.into_error(),
            })?;
            f.write_all(&[TAG_END])
                .and_then(|()| f.write_all(digest.as_bytes()))
                .map_err(wio)?;
            f.sync_all().map_err(wio)?;
            Ok((links, objects))
        })();
        match result {
            Ok(n) => {
                std::fs::rename(&tmp, out).map_err(io)?;
                fsio::sync_dir(dir)?;
                Ok(n)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Imports a bundle after verifying it completely against `keys`. Creates the store when
    /// `root` does not exist yet (or is an empty directory).
    pub fn import(
        root: &Path,
        bundle: &Path,
        opts: &ReplayOptions<'_>,
    ) -> Result<ImportSummary, StoreError> {
        Store::import_reporting(
            root,
            bundle,
            opts,
            Box::new(vmattest_core::tree::NoProgress),
        )
    }

    /// [`Store::import`], reporting the verification's progress to `progress`.
    pub fn import_reporting(
        root: &Path,
        bundle: &Path,
        opts: &ReplayOptions<'_>,
        progress: Box<dyn vmattest_core::tree::Progress + Send>,
    ) -> Result<ImportSummary, StoreError> {
        let mut created = Created::Nothing;
        let result = Store::import_checked(root, bundle, opts, progress, &mut created);
        if result.is_err() {
            // A refused bundle leaves nothing behind, not even the store it would have
            // created; and it removes only what it created itself.
            match created {
                Created::Nothing => {}
                Created::Dir => {
                    let _ = std::fs::remove_dir_all(root);
                }
                Created::Contents => {
                    if let Ok(dir) = Dir::open_root(root) {
                        for name in [
                            "store.json",
                            "LOCK",
                            "HEAD",
                            "links",
                            "objects",
                            "head",
                            "tmp",
                        ] {
                            let _ = dir.remove_tree(Path::new(name));
                        }
                    }
                }
            }
        }
        result
    }

    fn import_checked(
        root: &Path,
        bundle: &Path,
        opts: &ReplayOptions<'_>,
        progress: Box<dyn vmattest_core::tree::Progress + Send>,
        created: &mut Created,
    ) -> Result<ImportSummary, StoreError> {
        let bad = |detail: String| StoreError::Bundle {
            path: bundle.to_path_buf(),
            detail,
        };
        let f = fsio::open_regular(bundle)?;
        let (mut reader, header) = BundleReader::new(BufReader::new(f), bundle)?;
        let BundleHeader { meta, first, last } = header;
        let count = header_count(first, last).map_err(bad)?;

        if !Dir::open_root(root)
            .and_then(|d| d.file_exists(Path::new("store.json")))
            .unwrap_or(false)
        {
            let existed = root.symlink_metadata().is_ok();
            Store::init(root, meta.clone())?;
            *created = if existed {
                Created::Contents
            } else {
                Created::Dir
            };
        }
        let mut store = Store::open_writer(root)?;
        store.set_progress(progress);
        if store.meta != meta {
            return Err(bad(format!(
                "is for VM {:?} ({}), this store holds {:?} ({})",
                meta.vm_id, meta.alg, store.meta.vm_id, store.meta.alg
            )));
        }
        let staging = store.tmp_dir("import")?;

        // Frames, in the order export writes them: each link, its manifest, the manifest's
        // batches. Anything else (an object no link names, a link out of place) is refused
        // at once, so nothing unsigned is ever kept.
        let mut links: Vec<SignedLink> = Vec::new();
        let mut rebase: Option<SignedRebase> = None;
        let mut carried: Vec<NamedRevocation> = Vec::new();
        // The writer lock holds HEAD still for the whole import.
        let head = store.head()?;
        let mut expect: VecDeque<(ObjectId, Kind, SeqNo)> = VecDeque::new();
        let mut staged: Vec<ObjectId> = Vec::new();
        loop {
            let max = expect
                .front()
                .map_or(0, |(_, kind, _)| kind.max_body() + HEADER_LEN);
            let mut sink = StagedObject::new(staging.dir())?;
            let Some(frame) = reader.next_frame(&mut sink, max)? else {
                break;
            };
            match frame {
                Frame::Rebase(r) => {
                    if !links.is_empty() || r.value().seq() != first {
                        return Err(bad(format!(
                            "rebase of seq {} where only the first frame, for seq {first}, may be one",
                            r.value().seq()
                        )));
                    }
                    expect.push_back((r.value().manifest, Kind::Manifest, first));
                    links.push(r.value().link.clone());
                    rebase = Some(*r);
                }
                Frame::Revocation(r) => {
                    if carried.len() >= crate::MAX_REVOCATIONS {
                        return Err(bad(format!(
                            "more than {} revocations",
                            crate::MAX_REVOCATIONS
                        )));
                    }
                    let name = format!("{} (revocation {})", bundle.display(), carried.len());
                    carried.push((name, *r));
                }
                Frame::Link(link) => {
                    let seq = SeqNo(first.0 + links.len() as u64);
                    if !carried.is_empty() {
                        return Err(bad(format!("link {seq} after the revocations")));
                    }
                    if head.is_none() && links.is_empty() && first.0 != 0 {
                        return Err(bad(format!(
                            "starts at seq {first}; an empty store needs a bundle from seq 0 or from a rebase"
                        )));
                    }
                    if let Some((id, kind, owner)) = expect.front() {
                        return Err(bad(format!(
                            "link {seq} comes before {} {id} of link {owner}",
                            kind.name()
                        )));
                    }
                    if links.len() as u64 == count {
                        return Err(bad(format!(
                            "holds more links than its header's {first}..={last}"
                        )));
                    }
                    if link.value().seq != seq {
                        return Err(bad(format!(
                            "link {} where seq {seq} was expected",
                            link.value().seq
                        )));
                    }
                    expect.push_back((link.value().manifest, Kind::Manifest, seq));
                    links.push(*link);
                }
                Frame::Object { id, .. } => {
                    let Some((want, kind, owner)) = expect.pop_front() else {
                        return Err(bad(format!("object {id} is not named by any link")));
                    };
                    if id != want {
                        return Err(bad(format!(
                            "object {id} where the {} {want} of link {owner} was expected",
                            kind.name()
                        )));
                    }
                    sink.keep(&id)?;
                    if kind == Kind::Manifest {
                        let m = read_staged(staging.dir(), &id, Kind::Manifest)?;
                        let m = Manifest::decode(&m).map_err(|e| StoreError::BadManifest {
                            seq: owner,
                            detail: e.to_string(),
                        })?;
                        expect.extend(m.batches.iter().map(|b| (b.object, Kind::Batch, owner)));
                    }
                    staged.push(id);
                }
            }
        }
        if let Some((id, kind, owner)) = expect.front() {
            return Err(bad(format!(
                "ends before the {} {id} of link {owner}",
                kind.name()
            )));
        }
        if links.len() as u64 != count {
            return Err(bad(format!(
                "holds {} links, its header says {first}..={last}",
                links.len()
            )));
        }

        let revocations: Vec<NamedRevocation> =
            opts.revocations.iter().chain(&carried).cloned().collect();
        let opts = &ReplayOptions {
            revocations: &revocations,
            ..*opts
        };

        // Chain rules against what is already here.
        if rebase.is_some() && head.is_some() {
            return Err(bad(format!(
                "opens with a rebase of seq {first}; a rebase imports only into an empty store"
            )));
        }
        match head {
            None if first.0 != 0 && rebase.is_none() => {
                return Err(bad(format!("starts at seq {first}, the store is empty")));
            }
            Some(h) if last <= h.seq => {
                // Every link already here: importing the same bundle again changes nothing.
                // Anything else would roll the store back or fork it.
                let mut same = true;
                for (i, l) in links.iter().enumerate() {
                    let seq = SeqNo(first.0 + i as u64);
                    same &= link_digest(l) == link_digest(&store.read_link(seq)?);
                }
                if !same {
                    return Err(bad(format!(
                        "head seq {last} is not newer than this store's head seq {} and its links differ; refusing a rollback",
                        h.seq
                    )));
                }
                let verified = store.verify(opts)?;
                store.keep_revocations(&carried)?;
                return Ok(ImportSummary {
                    first,
                    last,
                    new_links: 0,
                    objects: 0,
                    verified,
                });
            }
            Some(h) if first.0 > h.seq.0.saturating_add(1) => {
                return Err(bad(format!(
                    "starts at seq {first}; the store ends at seq {}, leaving a gap",
                    h.seq
                )));
            }
            _ => {}
        }
        let mut all: Vec<SignedLink> = Vec::new();
        if let Some(h) = head {
            if first < h.base {
                return Err(bad(format!(
                    "starts at seq {first}; this store's chain starts at seq {} (pruned)",
                    h.base
                )));
            }
            rebase = store.rebase(&h)?;
            if let Some(r) = &rebase {
                all.push(r.value().link.clone());
            }
            for s in h.base.0 + u64::from(rebase.is_some())..first.0 {
                all.push(store.read_link(SeqNo(s))?);
            }
        }
        if let Some(h) = head {
            for (i, l) in links.iter().enumerate() {
                let seq = SeqNo(first.0 + i as u64);
                if seq <= h.seq && link_digest(l) != link_digest(&store.read_link(seq)?) {
                    return Err(bad(format!(
                        "link {seq} differs from this store's: the chains fork"
                    )));
                }
            }
        }
        all.extend(links.iter().cloned());

        let object = |id: &ObjectId, max: usize| -> Result<Vec<u8>, StoreError> {
            let rel = staged_path(id);
            if staging.dir().file_exists(&rel)? {
                let bytes = staging.dir().read_capped(&rel, max)?;
                if ObjectId::of(&bytes) == *id {
                    return Ok(bytes);
                }
            }
            store.read_object(id, max)
        };
        let src = Source {
            links: all.clone(),
            rebase: rebase.clone(),
            object: &object,
            from_cache: false,
        };
        let (verified, _, _) = if store.meta.encrypted {
            store.replay_source(&src, &opts.into(), &Outputs::Memory)?
        } else {
            let check = store.tmp_dir("import-check")?;
            let name = |i: usize, _: &vmattest_core::chain::ComponentRoot| format!("{i}.img");
            let out = Outputs::Dir {
                dir: check.dir(),
                name: &name,
            };
            store.replay_source(&src, &opts.into(), &out)?
        };

        // Commit: objects, then links (and a new store's rebase), then HEAD.
        let objects = staged.len() as u64;
        store.move_staged(&staging, &staged)?;
        let base = rebase.as_ref().map_or(SeqNo(0), |r| r.value().seq());
        if head.is_none()
            && let Some(r) = &rebase
        {
            let bytes = r.encode().map_err(|e| StoreError::Input(e.to_string()))?;
            store
                .dir
                .write_file(&store.rebase_path(base), &bytes, true)?;
        }
        let mut new_links = 0;
        for l in all.iter().skip(head.map_or(0, |h| {
            usize::try_from(h.seq.0 - h.base.0)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        })) {
            let bytes = l.encode().map_err(|e| StoreError::Input(e.to_string()))?;
            store
                .dir
                .write_file(&store.link_path(l.value().seq), &bytes, true)?;
            new_links += 1;
        }
        store.keep_revocations(&carried)?;
        store.cache_invalidate()?;
        store.set_head(Head {
            seq: verified.seq,
            link: verified.link,
            base,
        })?;
        Ok(ImportSummary {
            first,
            last,
            new_links,
            objects,
            verified,
        })
    }
}

impl StoreWriter {
    /// Moves verified staged objects into `objects/`; an intact copy already there is kept.
    fn move_staged(&self, staging: &TempDir, staged: &[ObjectId]) -> Result<(), StoreError> {
        let tmp = Path::new("tmp").join(staging.name());
        for id in staged {
            let to = self.object_path(id);
            if self.dir.file_exists(&to)? && self.read_object(id, MAX_FRAME).is_ok() {
                continue;
            }
            if let Some(parent) = to.parent() {
                self.dir.create_dir_all(parent)?;
            }
            let from = tmp.join(staged_path(id));
            if self.dir.file_exists(&from)? {
                self.dir.rename(&from, &to)?;
            }
        }
        self.sync_object_dirs()
    }
}

/// What a failed import must remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Created {
    Nothing,
    /// The store's directory itself.
    Dir,
    /// The store's files inside a directory that was empty before.
    Contents,
}

/// The number of links in `first..=last`, refusing an empty or absurd range.
pub(crate) fn header_count(first: SeqNo, last: SeqNo) -> Result<u64, String> {
    let Some(span) = last.0.checked_sub(first.0) else {
        return Err(format!("seq range {first}..={last} is empty"));
    };
    if span >= MAX_BUNDLE_LINKS {
        return Err(format!(
            "seq range {first}..={last} holds more than {MAX_BUNDLE_LINKS} links, expected at most {MAX_BUNDLE_LINKS}"
        ));
    }
    Ok(span + 1)
}

fn staged_path(id: &ObjectId) -> PathBuf {
    let hex = id.to_hex();
    PathBuf::from(format!("{}/{}", &hex[..2], &hex[2..]))
}

fn read_staged(dir: &Dir, id: &ObjectId, kind: Kind) -> Result<Vec<u8>, StoreError> {
    dir.read_capped(&staged_path(id), kind.max_body() + HEADER_LEN)
}

/// An object frame streamed to a new private file in the staging directory (created on the
/// first byte, so link frames leave nothing behind).
struct StagedObject<'d> {
    dir: &'d Dir,
    file: Option<File>,
    name: String,
}

impl<'d> StagedObject<'d> {
    fn new(dir: &'d Dir) -> Result<StagedObject<'d>, StoreError> {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| StoreError::Input(format!("OS randomness: {e}")))?;
        Ok(StagedObject {
            dir,
            file: None,
            name: format!("incoming-{}", hex::encode(rnd)),
        })
    }

    fn file(&mut self) -> Result<&mut File, StoreError> {
        match &mut self.file {
            Some(f) => Ok(f),
            slot => Ok(slot.insert(self.dir.create_new(&self.name)?)),
        }
    }

    /// Makes the frame durable and files it under its id.
    fn keep(&mut self, id: &ObjectId) -> Result<(), StoreError> {
        let path = self.dir.display(Path::new(&self.name));
        self.file()?
            .sync_all()
            .map_err(|error| StoreError::Io { path, error })?;
        let to = staged_path(id);
        if let Some(parent) = to.parent() {
            self.dir.create_dir_all(parent)?;
        }
        self.dir.rename(Path::new(&self.name), &to)
    }
}

impl Write for StagedObject<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
