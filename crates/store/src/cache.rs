//! The head cache: the head state's images and page digests, so that a take can XOR changed
//! pages against their previous bytes without replaying the chain. It is derived data: a stamp
//! written last names the head it matches, and a missing or stale stamp makes the next take
//! rebuild it from the chain. Only the stamp is fsynced: every use checks what it reads (the
//! digests against the head's signed roots, each page against its digest) and rebuilds a cache
//! that a crash left torn.
//!
//! In an encrypted store every cached page is encrypted (see [`CacheKey`]); `<i>.versions`
//! holds, per page, the seq that last wrote it, which is half of that page's nonce.

use std::borrow::Cow;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use vmattest_core::alg::{PAGE_SIZE, PageIndex};
use vmattest_core::chain::{ComponentRoot, DeltaEntry, Manifest, SeqNo};
use vmattest_core::tree::ImageTree;
use vmattest_image::MappedImage;

use crate::cachefiles::{
    BaseDiff, MAX_DIGEST_FILE, Stamp, base_diff, encode_base_diff, parse_base_diff,
};
use crate::crypt::{CacheKey, StoreSecret};
use crate::dir::Access;
use crate::pages::{idx, page_of};
use crate::replay::{Outputs, Plan};
use crate::{Head, StoreError, StoreWriter};

/// Read access to one cached image, decrypting pages when the store is encrypted.
pub(crate) struct HeadPages<'k> {
    map: MappedImage,
    crypt: Option<(&'k CacheKey, Vec<u64>)>,
}

impl HeadPages<'_> {
    pub fn page(&self, p: u64) -> Cow<'_, [u8]> {
        let raw = page_of(self.map.bytes(), p);
        match &self.crypt {
            None => Cow::Borrowed(raw),
            Some((key, versions)) => {
                let mut buf = raw.to_vec();
                let v = versions
                    .get(usize::try_from(p).unwrap_or(usize::MAX))
                    .copied()
                    .unwrap_or(0);
                key.apply(p, v, &mut buf);
                Cow::Owned(buf)
            }
        }
    }
}

/// Page digests as a digest file holds them: the zero page's (`zero`, see [`crate::Store::zero_leaf`])
/// as zeros.
fn stored_digests<'a>(zero: Option<&[u8]>, digests: &'a [u8]) -> Cow<'a, [u8]> {
    let Some(z) = zero else {
        return Cow::Borrowed(digests);
    };
    let mut out = digests.to_vec();
    for d in out.chunks_exact_mut(z.len()) {
        if *d == *z {
            d.fill(0);
        }
    }
    Cow::Owned(out)
}

/// Ascending page indices as runs of consecutive pages, each written in one go.
fn page_runs(pages: impl Iterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for p in pages {
        match runs.last_mut() {
            Some(r) if r.end == p => r.end += 1,
            _ => runs.push(p..p.saturating_add(1)),
        }
    }
    runs
}

fn read_versions(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn versions_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

impl StoreWriter {
    /// Replaces a cache file (an image, a digest file) with a new sparse 0600 file holding
    /// `bytes`: zero runs are holes, so an idle guest's untouched memory costs no disk (no
    /// fsync, as for every cache file).
    fn write_sparse(&self, rel: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.dir.remove_file(rel)?;
        let f = self.dir.open_file(rel, Access::CreateNew)?;
        let io = |error| StoreError::Io {
            path: self.dir.display(rel),
            error,
        };
        f.set_len(bytes.len() as u64).map_err(io)?;
        for run in crate::pages::nonzero_runs(bytes) {
            f.write_all_at(&bytes[run.clone()], run.start as u64)
                .map_err(io)?;
        }
        Ok(())
    }

    /// Replaces a cache file with a new 0600 file, without fsync: callers remove the stamp
    /// first, and every reader checks what it reads.
    fn write_derived(&self, rel: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        use std::io::Write as _;
        self.dir.remove_file(rel)?;
        self.dir
            .open_file(rel, Access::CreateNew)?
            .write_all(bytes)
            .map_err(|error| StoreError::Io {
                path: self.dir.display(rel),
                error,
            })
    }

    /// Keeps the baseline's page digests, so that replays need not hash the baseline's zero
    /// pages again (half of a typical guest's pages, every offset hashing differently): as
    /// their differences from the head's digests, given as `head` when the caller has them
    /// (at a baseline they are the base's own), else read from the cache.
    pub(crate) fn keep_base_digests(
        &self,
        base: &[ImageTree],
        head: Option<&[ImageTree]>,
    ) -> Result<(), StoreError> {
        for (i, t) in base.iter().enumerate() {
            let read;
            let head = match head.and_then(|h| h.get(i)) {
                Some(h) => h.page_digests(),
                None => {
                    read = self
                        .read_digests(&self.cache_digests(i))
                        .unwrap_or_default();
                    &read
                }
            };
            let diff = base_diff(t.page_digests(), head, t.alg().digest_len());
            self.write_base_diff(i, Some(&diff))?;
        }
        Ok(())
    }

    /// Replaces component `i`'s base diff (`None`: the base is not known; it is recomputed
    /// when needed), dropping a whole kept list from before base diffs.
    fn write_base_diff(&self, i: usize, diff: Option<&BaseDiff>) -> Result<(), StoreError> {
        self.dir.remove_file(&self.cache_base_digests(i))?;
        match diff {
            // Replaced by a rename: at every moment the file names a base, or is absent.
            Some(d) => self
                .dir
                .write_file(&self.cache_base_diff(i), &encode_base_diff(d), false),
            None => self.dir.remove_file(&self.cache_base_diff(i)),
        }
    }

    /// Adds to `kept` the digests pages `first..end` of `file` held before they change, for
    /// those that had not changed since the base; `false` when they cannot be read.
    fn keep_old_digests(
        &self,
        file: &std::fs::File,
        (n, kept): &mut BaseDiff,
        first: usize,
        end: usize,
        dlen: usize,
    ) -> bool {
        let (lo, hi) = (first.min(*n), end.min(*n));
        if (lo..hi).all(|p| kept.contains_key(&p)) {
            return true;
        }
        let mut old = vec![0u8; (hi - lo) * dlen];
        if file.read_exact_at(&mut old, (lo * dlen) as u64).is_err() {
            return false;
        }
        let zero = self.zero_leaf();
        for (k, d) in old.chunks_exact(dlen).enumerate() {
            let real = match &zero {
                Some(z) if d.iter().all(|&b| b == 0) => z.clone(),
                _ => d.to_vec(),
            };
            kept.entry(lo + k).or_insert(real);
        }
        true
    }

    /// Marks the cache stale before it is modified.
    pub(crate) fn cache_invalidate(&self) -> Result<(), StoreError> {
        let p = self.stamp_path();
        if self.dir.kind(&p)?.is_some() {
            self.dir.remove_file(&p)?;
            self.dir.open_dir(Path::new("head"))?.sync()?;
        }
        Ok(())
    }

    /// Writes every component's digests and base diff, then the stamp. With `changed`, the
    /// digest files already hold the previous head's and only the digests of those entries
    /// are rewritten, after the base diff has taken the old digests of those first changed.
    pub(crate) fn cache_commit(
        &self,
        head: &Head,
        trees: &[ImageTree],
        changed: Option<&[DeltaEntry]>,
    ) -> Result<(), StoreError> {
        let zero = self.zero_leaf();
        for (i, t) in trees.iter().enumerate() {
            let path = self.cache_digests(i);
            let dlen = t.alg().digest_len();
            let Some(entries) = changed else {
                // Replaced whole: the base (as far as it is known) is kept against the new head.
                let base = self.base_digests(i);
                self.write_sparse(&path, &stored_digests(zero.as_deref(), t.page_digests()))?;
                let diff = base.map(|b| base_diff(&b, t.page_digests(), dlen));
                self.write_base_diff(i, diff.as_ref())?;
                continue;
            };
            let component = u16::try_from(i).unwrap_or(u16::MAX);
            let runs = page_runs(
                entries
                    .iter()
                    .filter(|e| e.component == component)
                    .map(|e| idx(e.page.0)),
            );
            if runs.is_empty() {
                continue;
            }
            let f = self.dir.open_file(&path, Access::Write)?;
            // The digests of pages changing now that had not changed since the base join its
            // diff first, which then gives the base both before and after they are rewritten.
            let diff = match self
                .dir
                .read_capped(&self.cache_base_diff(i), MAX_DIGEST_FILE)
            {
                Ok(d) => parse_base_diff(&d, dlen),
                // A store from before base diffs: its whole kept list, against this head.
                Err(_) => self
                    .base_digests(i)
                    .map(|b| base_diff(&b, &self.read_digests(&path).unwrap_or_default(), dlen)),
            };
            let diff = diff.and_then(|mut d| {
                runs.iter()
                    .all(|r| self.keep_old_digests(&f, &mut d, r.start, r.end, dlen))
                    .then_some(d)
            });
            self.write_base_diff(i, diff.as_ref())?;
            for r in runs {
                let bytes = t
                    .page_digests()
                    .get(r.start * dlen..r.end * dlen)
                    .ok_or_else(|| {
                        StoreError::Input(format!("page {}: beyond component {i}", r.start))
                    })?;
                f.write_all_at(
                    &stored_digests(zero.as_deref(), bytes),
                    (r.start * dlen) as u64,
                )
                .map_err(|error| StoreError::Io {
                    path: self.dir.display(&path),
                    error,
                })?;
            }
        }
        let stamp = serde_json::to_vec(&Stamp {
            seq: head.seq.0,
            link: head.link.to_hex(),
        })
        .map_err(|e| StoreError::Input(e.to_string()))?;
        self.dir.write_file(&self.stamp_path(), &stamp, true)
    }

    /// The cached bytes of each component of `trees` whose bytes the cache keeps.
    pub(crate) fn open_head_images<'k>(
        &self,
        trees: &[ImageTree],
        key: Option<&'k CacheKey>,
    ) -> Result<Vec<Option<HeadPages<'k>>>, StoreError> {
        trees
            .iter()
            .enumerate()
            .map(|(i, t)| {
                self.keeps_image(t.len())
                    .then(|| self.open_head_pages(i, key))
                    .transpose()
            })
            .collect()
    }

    pub(crate) fn open_head_pages<'k>(
        &self,
        i: usize,
        key: Option<&'k CacheKey>,
    ) -> Result<HeadPages<'k>, StoreError> {
        let path = self.cache_image(i);
        let file = self.dir.open_file(&path, Access::Read)?;
        let map = MappedImage::from_file(file, &self.dir.display(&path)).map_err(|e| {
            StoreError::Corrupt {
                file: self.dir.display(&path),
                detail: e.to_string(),
            }
        })?;
        let crypt = match key {
            None => None,
            Some(k) => Some((
                k,
                read_versions(&self.dir.read_capped(&self.cache_versions(i), 1 << 30)?),
            )),
        };
        Ok(HeadPages { map, crypt })
    }

    /// Ensures the cache holds `head`, rebuilding it from the chain when it is stale or its
    /// digests do not give the head's roots, and returns its trees.
    pub(crate) fn load_head_cache(
        &self,
        head: &Head,
        m: &Manifest,
        secret: Option<&StoreSecret>,
        key: Option<&CacheKey>,
    ) -> Result<Vec<ImageTree>, StoreError> {
        if self.cache_matches(head)
            && let Some(trees) = self.cached_trees(m, key)
        {
            return Ok(trees);
        }
        self.rebuild_head_cache(head, secret, key)
    }

    /// The trees of the cached digests, or `None` when they do not give the head's signed
    /// roots (digests reused for unchanged pages end up in the next signed root).
    fn cached_trees(&self, m: &Manifest, key: Option<&CacheKey>) -> Option<Vec<ImageTree>> {
        let mut trees = Vec::with_capacity(m.components.len());
        for (i, c) in m.components.iter().enumerate() {
            let digests = self.read_digests(&self.cache_digests(i)).ok()?;
            let small = if c.len <= PAGE_SIZE as u64 {
                self.open_head_pages(i, key).ok()?.page(0).into_owned()
            } else {
                Vec::new()
            };
            match ImageTree::from_page_digests(&self.params, c.len, digests, &small) {
                Ok(t) if t.root() == c.root => trees.push(t),
                _ => return None,
            }
        }
        Some(trees)
    }

    /// Whether every listed cached page (`pages[c]` for component `c`) hashes to its digest in
    /// `trees`; a component whose bytes the cache does not keep has nothing to check.
    pub(crate) fn pages_match(
        &self,
        trees: &[ImageTree],
        cached: &[Option<HeadPages<'_>>],
        pages: &[Vec<u64>],
    ) -> bool {
        trees
            .iter()
            .zip(cached)
            .zip(pages)
            .all(|((t, cached), list)| {
                let Some(cached) = cached else {
                    return true;
                };
                list.par_iter().all(|&p| {
                    let page = PageIndex(p);
                    t.page_digest(page) == Some(self.params.page_digest(page, &cached.page(p)))
                })
            })
    }

    /// Rebuilds the cache from the chain (whose roots the replay checks) and returns its trees.
    pub(crate) fn rebuild_head_cache(
        &self,
        head: &Head,
        secret: Option<&StoreSecret>,
        key: Option<&CacheKey>,
    ) -> Result<Vec<ImageTree>, StoreError> {
        self.cache_invalidate()?;
        let opts = Plan {
            upto: Some(head.seq),
            keys: None,
            secret,
            max_age: None,
            revocations: &[],
        };
        let trees = match key {
            None if self.meta.head_cache => {
                let head_dir = self.dir.create_dir_all(Path::new("head"))?;
                let name = |i: usize, _: &ComponentRoot| format!("{i}.img");
                self.replay_into(
                    &opts,
                    &Outputs::Dir {
                        dir: &head_dir,
                        name: &name,
                    },
                    false,
                )?
                .1
            }
            _ => {
                // Rebuild in memory, never as plaintext on disk, then encrypt (or, for a store
                // that keeps only digests, keep one-page components) into place.
                let (_, trees, files) = self.replay_into(&opts, &Outputs::Memory, false)?;
                for (i, (f, path)) in files.into_iter().enumerate() {
                    let plain = MappedImage::from_file(f, &path)
                        .map_err(|e| StoreError::Input(e.to_string()))?;
                    self.write_full_cache_image(i, plain.bytes(), head.seq, key)?;
                }
                trees
            }
        };
        self.cache_commit(head, &trees, None)?;
        Ok(trees)
    }

    /// Replaces cached image `i` with `plain` (encrypted page by page when keyed); nothing
    /// when the cache keeps only its digests.
    fn write_full_cache_image(
        &self,
        i: usize,
        plain: &[u8],
        seq: SeqNo,
        key: Option<&CacheKey>,
    ) -> Result<(), StoreError> {
        if !self.keeps_image(plain.len() as u64) {
            return Ok(());
        }
        let path = self.cache_image(i);
        let Some(k) = key else {
            return self.write_sparse(&path, plain);
        };
        let mut enc = plain.to_vec();
        for (p, page) in enc.chunks_mut(PAGE_SIZE).enumerate() {
            k.apply(p as u64, seq.0, page);
        }
        let versions = vec![seq.0; plain.len().div_ceil(PAGE_SIZE)];
        self.write_derived(&self.cache_versions(i), &versions_bytes(&versions))?;
        self.write_derived(&path, &enc)
    }

    /// Writes the cached images of a new baseline whole (`full[c]` is component `c`, `None`
    /// for those the cache does not keep).
    pub(crate) fn write_cache_images(
        &self,
        full: &[Option<Cow<'_, [u8]>>],
        seq: SeqNo,
        key: Option<&CacheKey>,
    ) -> Result<(), StoreError> {
        self.cache_invalidate()?;
        self.dir.create_dir_all(Path::new("head"))?;
        for (i, image) in full.iter().enumerate() {
            if let Some(image) = image {
                self.write_full_cache_image(i, image, seq, key)?;
            }
        }
        Ok(())
    }

    /// Opens the cached images for in-place writes of the pages of seq `seq`, after marking
    /// the cache stale: a take that stops half way leaves it to be rebuilt.
    pub(crate) fn cache_writer<'k>(
        &self,
        trees: &[ImageTree],
        seq: SeqNo,
        key: Option<&'k CacheKey>,
    ) -> Result<CacheWriter<'k>, StoreError> {
        self.cache_invalidate()?;
        let files = trees
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if !self.keeps_image(t.len()) {
                    return Ok(None);
                }
                let path = self.cache_image(i);
                let f = self.dir.open_file(&path, Access::Write)?;
                Ok(Some((f, self.dir.display(&path))))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(CacheWriter { files, key, seq })
    }

    /// Records seq `seq` as the version of every page it wrote (encrypted caches only).
    pub(crate) fn cache_set_versions(
        &self,
        entries: &[DeltaEntry],
        trees: &[ImageTree],
        seq: SeqNo,
    ) -> Result<(), StoreError> {
        for (i, t) in trees.iter().enumerate() {
            if !self.keeps_image(t.len()) {
                continue;
            }
            let path = self.cache_versions(i);
            let mut versions = read_versions(&self.dir.read_capped(&path, 1 << 30)?);
            let component = u16::try_from(i).unwrap_or(u16::MAX);
            for e in entries.iter().filter(|e| e.component == component) {
                if let Some(v) = versions.get_mut(idx(e.page.0)) {
                    *v = seq.0;
                }
            }
            self.write_derived(&path, &versions_bytes(&versions))?;
        }
        Ok(())
    }
}

/// In-place writer of a new head's pages into the cached images; shared by the batch workers.
/// Components whose bytes the cache does not keep have no file, and their pages are skipped.
pub(crate) struct CacheWriter<'k> {
    files: Vec<Option<(std::fs::File, PathBuf)>>,
    key: Option<&'k CacheKey>,
    seq: SeqNo,
}

impl CacheWriter<'_> {
    /// Writes the new bytes of page `page` of component `c` (encrypted when keyed). In a
    /// plain cache a page that became zero is punched out instead, so the image stays sparse.
    pub fn write(&self, c: usize, page: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.files.get(c) else {
            return Err(StoreError::Input(format!("component {c}: no cached image")));
        };
        let Some((f, path)) = file else {
            return Ok(());
        };
        let at = page * PAGE_SIZE as u64;
        let result = match self.key {
            None if crate::pages::is_zero(bytes) => {
                use rustix::fs::FallocateFlags as F;
                rustix::fs::fallocate(f, F::PUNCH_HOLE | F::KEEP_SIZE, at, bytes.len() as u64)
                    .map_err(std::io::Error::from)
                    // A file system without holes: the zeros are written instead.
                    .or_else(|_| f.write_all_at(bytes, at))
            }
            None => f.write_all_at(bytes, at),
            Some(k) => {
                let mut buf = bytes.to_vec();
                k.apply(page, self.seq.0, &mut buf);
                f.write_all_at(&buf, at)
            }
        };
        result.map_err(|error| StoreError::Io {
            path: path.clone(),
            error,
        })
    }
}
