//! Bundles: one file carrying links a..=b and every object they reference, for migration.
//!
//! ```text
//! header   envelope kind 7 (bundle), version 1, body:
//!            store meta (JSON) bytes32 | first seq u64 | last seq u64
//! frame*   tag u8 (1 link, 2 object) | len u32 | bytes
//! trailer  tag u8 = 0xff | BLAKE3 of every byte before the trailer [32]
//! ```
//!
//! Import stages everything in `tmp/`, verifies the whole chain (signatures against pinned
//! keys, links, manifests, every page) and only then moves objects and links into place and
//! replaces HEAD. A partial or corrupt bundle leaves the store as it was.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use vmattest_core::chain::{Link, Manifest, ObjectId, SeqNo, SignedLink, link_digest};
use vmattest_core::record::Signed;
use vmattest_core::wire::{HEADER_LEN, Kind, Writer};

use crate::replay::{ReplayOptions, Source, Verified};
use crate::{Head, Store, StoreError, StoreMeta, fsio};

const TAG_LINK: u8 = 1;
const TAG_OBJECT: u8 = 2;
const TAG_END: u8 = 0xff;
const MAX_FRAME: usize = Kind::Manifest.max_body() + HEADER_LEN;

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
        if first > last || last > head.seq {
            return Err(StoreError::Input(format!(
                "seq range {first}..={last}: the store holds 0..={}",
                head.seq
            )));
        }
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
            let f = std::fs::File::create(&tmp).map_err(fsio::io(&tmp))?;
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
                frame(
                    &mut w,
                    TAG_LINK,
                    &link
                        .encode()
                        .map_err(|e| StoreError::Input(e.to_string()))?,
                )
                .map_err(wio)?;
                links += 1;
                let manifest_bytes = self.read_object(&link.value().manifest, MAX_FRAME)?;
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
    /// `root` does not exist yet.
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
        let new_dir = !root.exists();
        let new_store = !root.join("store.json").exists();
        let result = Store::import_checked(root, bundle, opts, progress);
        if result.is_err() && new_store {
            // A refused bundle leaves nothing behind, not even the store it would have created.
            if new_dir {
                let _ = std::fs::remove_dir_all(root);
            } else {
                for name in ["store.json", "LOCK", "HEAD"] {
                    let _ = std::fs::remove_file(root.join(name));
                }
                for name in ["links", "objects", "head", "tmp"] {
                    let _ = std::fs::remove_dir_all(root.join(name));
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
    ) -> Result<ImportSummary, StoreError> {
        let bad = |detail: String| StoreError::Bundle {
            path: bundle.to_path_buf(),
            detail,
        };
        let f = std::fs::File::open(bundle).map_err(fsio::io(bundle))?;
        let mut r = HashingReader {
            inner: BufReader::new(f),
            hash: blake3::Hasher::new(),
        };

        // Header.
        let mut head16 = [0u8; HEADER_LEN];
        r.read_exact(&mut head16)
            .map_err(|_| bad("truncated header".into()))?;
        let body_len =
            u32::from_be_bytes([head16[12], head16[13], head16[14], head16[15]]) as usize;
        if body_len > Kind::Bundle.max_body() {
            return Err(bad(format!(
                "header of {body_len} bytes, expected at most {}",
                Kind::Bundle.max_body()
            )));
        }
        let mut whole = head16.to_vec();
        whole.resize(HEADER_LEN + body_len, 0);
        r.read_exact(&mut whole[HEADER_LEN..])
            .map_err(|_| bad("truncated header".into()))?;
        let mut hr =
            vmattest_core::wire::open(&whole, Kind::Bundle).map_err(|e| bad(e.to_string()))?;
        let meta_json = hr
            .bytes("store meta", 64 * 1024)
            .map_err(|e| bad(e.to_string()))?;
        let meta: StoreMeta =
            serde_json::from_slice(meta_json).map_err(|e| bad(format!("store meta: {e}")))?;
        let first = SeqNo(hr.u64("first seq").map_err(|e| bad(e.to_string()))?);
        let last = SeqNo(hr.u64("last seq").map_err(|e| bad(e.to_string()))?);
        if first > last {
            return Err(bad(format!("seq range {first}..={last} is empty")));
        }

        if !root.join("store.json").exists() {
            if first.0 != 0 {
                return Err(bad(format!(
                    "starts at seq {first}; a new store needs a bundle from seq 0"
                )));
            }
            Store::init(root, meta.clone())?;
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

        // Frames into staging.
        let mut links: Vec<SignedLink> = Vec::new();
        let mut objects = 0u64;
        loop {
            let mut tag = [0u8; 1];
            let digest_so_far = r.hash.clone().finalize();
            r.inner
                .read_exact(&mut tag)
                .map_err(|_| bad("truncated: no trailer".into()))?;
            if tag[0] == TAG_END {
                let mut want = [0u8; 32];
                r.inner
                    .read_exact(&mut want)
                    .map_err(|_| bad("truncated trailer".into()))?;
                if want != *digest_so_far.as_bytes() {
                    return Err(bad(
                        "trailer digest does not match the bundle's bytes".into()
                    ));
                }
                let mut extra = [0u8; 1];
                if r.inner.read(&mut extra).map_err(fsio::io(bundle))? != 0 {
                    return Err(bad("bytes after the trailer".into()));
                }
                break;
            }
            r.hash.update(&tag);
            let mut len = [0u8; 4];
            r.read_exact(&mut len)
                .map_err(|_| bad("truncated frame".into()))?;
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME {
                return Err(bad(format!(
                    "frame of {len} bytes, expected at most {MAX_FRAME}"
                )));
            }
            let mut bytes = vec![0u8; len];
            r.read_exact(&mut bytes)
                .map_err(|_| bad("truncated frame".into()))?;
            match tag[0] {
                TAG_LINK => {
                    let seq = SeqNo(first.0 + links.len() as u64);
                    let link = Signed::<Link>::decode(&bytes)
                        .map_err(|e| bad(format!("link {seq}: {e}")))?;
                    links.push(link);
                }
                TAG_OBJECT => {
                    let id = ObjectId::of(&bytes);
                    let hex = id.to_hex();
                    let dir = staging.path().join(&hex[..2]);
                    std::fs::create_dir_all(&dir).map_err(fsio::io(&dir))?;
                    std::fs::write(dir.join(&hex[2..]), &bytes).map_err(fsio::io(&dir))?;
                    objects += 1;
                }
                other => {
                    return Err(bad(format!(
                        "frame tag {other}, expected 1 (link) or 2 (object)"
                    )));
                }
            }
        }
        if links.len() as u64 != last.0 - first.0 + 1 {
            return Err(bad(format!(
                "holds {} links, its header says {first}..={last}",
                links.len()
            )));
        }

        // Chain rules against what is already here.
        let head = store.head()?;
        match head {
            None if first.0 != 0 => {
                return Err(bad(format!("starts at seq {first}, the store is empty")));
            }
            Some(h) if last <= h.seq => {
                return Err(bad(format!(
                    "head seq {last} is not newer than this store's head seq {}; refusing a rollback",
                    h.seq
                )));
            }
            Some(h) if first.0 > h.seq.0 + 1 => {
                return Err(bad(format!(
                    "starts at seq {first}; the store ends at seq {}, leaving a gap",
                    h.seq
                )));
            }
            _ => {}
        }
        let mut all: Vec<SignedLink> = Vec::new();
        for s in 0..first.0 {
            all.push(store.read_link(SeqNo(s))?);
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

        let staged = staging.path().to_path_buf();
        let object = |id: &ObjectId, max: usize| -> Result<Vec<u8>, StoreError> {
            let hex = id.to_hex();
            let p = staged.join(&hex[..2]).join(&hex[2..]);
            if p.exists() {
                let bytes = fsio::read_capped(&p, max)?;
                if ObjectId::of(&bytes) == *id {
                    return Ok(bytes);
                }
            }
            store.read_object(id, max)
        };
        let check = store.tmp_dir("import-check")?;
        let (verified, _) = store.replay_source(
            &Source {
                links: all.clone(),
                object: &object,
                from_cache: false,
            },
            opts,
            check.path(),
            &|i, _| format!("{i}.img"),
        )?;

        // Commit: objects, then links, then HEAD.
        move_objects(&staged, &store.root.join("objects"))?;
        let mut new_links = 0;
        for l in all.iter().skip(head.map_or(0, |h| {
            usize::try_from(h.seq.0)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        })) {
            let bytes = l.encode().map_err(|e| StoreError::Input(e.to_string()))?;
            fsio::write_atomic(&store.link_path(l.value().seq), &bytes)?;
            new_links += 1;
        }
        store.cache_invalidate()?;
        store.set_head(Head {
            seq: verified.seq,
            link: verified.link,
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

fn frame<W: Write>(w: &mut W, tag: u8, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes())?;
    w.write_all(bytes)
}

struct HashingReader<R: Read> {
    inner: R,
    hash: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn move_objects(staged: &Path, objects: &Path) -> Result<(), StoreError> {
    let dirs = std::fs::read_dir(staged).map_err(fsio::io(staged))?;
    for d in dirs {
        let d = d.map_err(fsio::io(staged))?.path();
        let target_dir: PathBuf = objects.join(d.file_name().unwrap_or_default());
        std::fs::create_dir_all(&target_dir).map_err(fsio::io(&target_dir))?;
        for f in std::fs::read_dir(&d).map_err(fsio::io(&d))? {
            let f = f.map_err(fsio::io(&d))?.path();
            let target = target_dir.join(f.file_name().unwrap_or_default());
            // An existing copy is kept only if it is intact; the staged one was verified.
            let intact = || {
                let name = format!(
                    "{}{}",
                    target_dir.file_name()?.to_str()?,
                    target.file_name()?.to_str()?
                );
                let bytes = std::fs::read(&target).ok()?;
                Some(ObjectId::of(&bytes).to_hex() == name)
            };
            if !target.exists() || intact() != Some(true) {
                std::fs::File::open(&f)
                    .and_then(|h| h.sync_all())
                    .map_err(fsio::io(&f))?;
                std::fs::rename(&f, &target).map_err(fsio::io(&target))?;
            }
        }
        fsio::sync_dir(&target_dir)?;
    }
    Ok(())
}
