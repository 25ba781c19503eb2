//! The head cache: the head state's images and page digests, so that a take can XOR changed
//! pages against their previous bytes without replaying the chain. It is derived data: a stamp
//! written last names the head it matches, and a missing or stale stamp makes the next take
//! rebuild it from the chain.
//!
//! In an encrypted store every cached page is encrypted (see [`CacheKey`]); `<i>.versions`
//! holds, per page, the seq that last wrote it, which is half of that page's nonce.

use std::borrow::Cow;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vmattest_core::alg::PAGE_SIZE;
use vmattest_core::chain::{ComponentRoot, DeltaEntry, Manifest, SeqNo};
use vmattest_core::tree::ImageTree;
use vmattest_image::MappedImage;

use crate::crypt::{CacheKey, StoreSecret};
use crate::replay::ReplayOptions;
use crate::take::page_of;
use crate::{Head, Store, StoreError, fsio};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    seq: u64,
    link: String,
}

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

fn read_versions(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn versions_bytes(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

impl Store {
    pub(crate) fn cache_image(&self, i: usize) -> PathBuf {
        self.root.join("head").join(format!("{i}.img"))
    }

    fn cache_digests(&self, i: usize) -> PathBuf {
        self.root.join("head").join(format!("{i}.digests"))
    }

    fn cache_base_digests(&self, i: usize) -> PathBuf {
        self.root.join("head").join(format!("{i}.base-digests"))
    }

    /// Keeps the baseline's page digests, so that replays need not hash the baseline's zero
    /// pages again (half of a typical guest's pages, every offset hashing differently).
    pub(crate) fn keep_base_digests(&self, trees: &[ImageTree]) -> Result<(), StoreError> {
        for (i, t) in trees.iter().enumerate() {
            fsio::write_atomic(&self.cache_base_digests(i), t.page_digests())?;
        }
        Ok(())
    }

    /// The baseline tree of component `i` from the kept digests, when they give the signed
    /// root (derived data: anything else is ignored and the tree is recomputed).
    pub(crate) fn cached_base_tree(&self, i: usize, c: &ComponentRoot) -> Option<ImageTree> {
        if c.len <= PAGE_SIZE as u64 {
            return None;
        }
        let digests = fsio::read_capped(&self.cache_base_digests(i), 1 << 30).ok()?;
        let tree = ImageTree::from_page_digests(&self.params, c.len, digests, &[]).ok()?;
        (tree.root() == c.root).then_some(tree)
    }

    fn cache_versions(&self, i: usize) -> PathBuf {
        self.root.join("head").join(format!("{i}.versions"))
    }

    fn stamp_path(&self) -> PathBuf {
        self.root.join("head").join("stamp.json")
    }

    /// Whether the cache holds exactly `head`.
    pub(crate) fn cache_matches(&self, head: &Head) -> bool {
        let Ok(bytes) = fsio::read_capped(&self.stamp_path(), 4096) else {
            return false;
        };
        let want = Stamp {
            seq: head.seq.0,
            link: head.link.to_hex(),
        };
        serde_json::from_slice::<Stamp>(&bytes).is_ok_and(|s| s == want)
    }

    /// Marks the cache stale before it is modified.
    pub(crate) fn cache_invalidate(&self) -> Result<(), StoreError> {
        let p = self.stamp_path();
        if p.exists() {
            std::fs::remove_file(&p).map_err(fsio::io(&p))?;
            fsio::sync_dir(&self.root.join("head"))?;
        }
        Ok(())
    }

    /// Writes every component's digests, then the stamp (after the images are durable).
    pub(crate) fn cache_commit(&self, head: &Head, trees: &[ImageTree]) -> Result<(), StoreError> {
        for (i, t) in trees.iter().enumerate() {
            let img = self.cache_image(i);
            std::fs::File::open(&img)
                .and_then(|f| f.sync_all())
                .map_err(fsio::io(&img))?;
            fsio::write_atomic(&self.cache_digests(i), t.page_digests())?;
        }
        let stamp = serde_json::to_vec(&Stamp {
            seq: head.seq.0,
            link: head.link.to_hex(),
        })
        .map_err(|e| StoreError::Input(e.to_string()))?;
        fsio::write_atomic(&self.stamp_path(), &stamp)
    }

    pub(crate) fn open_head_pages<'k>(
        &self,
        i: usize,
        key: Option<&'k CacheKey>,
    ) -> Result<HeadPages<'k>, StoreError> {
        let path = self.cache_image(i);
        let map = MappedImage::open(&path).map_err(|e| StoreError::Corrupt {
            file: path,
            detail: e.to_string(),
        })?;
        let crypt = match key {
            None => None,
            Some(k) => Some((
                k,
                read_versions(&fsio::read_capped(&self.cache_versions(i), 1 << 30)?),
            )),
        };
        Ok(HeadPages { map, crypt })
    }

    /// Ensures the cache matches `head` (rebuilding it from the chain if not) and returns
    /// its trees.
    pub(crate) fn load_head_cache(
        &self,
        head: &Head,
        m: &Manifest,
        secret: Option<&StoreSecret>,
        key: Option<&CacheKey>,
    ) -> Result<Vec<ImageTree>, StoreError> {
        if !self.cache_matches(head) {
            self.cache_invalidate()?;
            let opts = ReplayOptions {
                upto: Some(head.seq),
                keys: None,
                secret,
                max_age: None,
            };
            let trees = match key {
                None => {
                    self.replay_into(
                        &opts,
                        &self.root.join("head"),
                        &|i, _| format!("{i}.img"),
                        false,
                    )?
                    .1
                }
                Some(_) => {
                    // Rebuild in scratch space, then encrypt into place.
                    let tmp = self.tmp_dir("cache")?;
                    let (_, trees) =
                        self.replay_into(&opts, tmp.path(), &|i, _| format!("{i}.img"), false)?;
                    for i in 0..trees.len() {
                        let plain = MappedImage::open(&tmp.path().join(format!("{i}.img")))
                            .map_err(|e| StoreError::Input(e.to_string()))?;
                        self.write_full_cache_image(i, plain.bytes(), head.seq, key)?;
                    }
                    trees
                }
            };
            self.cache_commit(head, &trees)?;
        }
        m.components
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let digests = fsio::read_capped(&self.cache_digests(i), 1 << 30)?;
                let small = if c.len <= PAGE_SIZE as u64 {
                    self.open_head_pages(i, key)?.page(0).into_owned()
                } else {
                    Vec::new()
                };
                let tree = ImageTree::from_page_digests(&self.params, c.len, digests, &small)
                    .map_err(|e| StoreError::Corrupt {
                        file: self.cache_digests(i),
                        detail: e.to_string(),
                    })?;
                // Digests reused for unchanged pages end up in the next signed root: they must
                // be the head's.
                if tree.root() != c.root {
                    return Err(StoreError::Corrupt {
                        file: self.cache_digests(i),
                        detail: format!(
                            "the digests give root {}, the head's component {} has {}; `snapshot fsck --repair` discards the cache",
                            tree.root(),
                            c.name,
                            c.root
                        ),
                    });
                }
                Ok(tree)
            })
            .collect()
    }

    /// Replaces cached image `i` with `plain` (encrypted page by page when keyed).
    fn write_full_cache_image(
        &self,
        i: usize,
        plain: &[u8],
        seq: SeqNo,
        key: Option<&CacheKey>,
    ) -> Result<(), StoreError> {
        let path = self.cache_image(i);
        let Some(k) = key else {
            return fsio::write_atomic(&path, plain);
        };
        let mut enc = plain.to_vec();
        for (p, page) in enc.chunks_mut(PAGE_SIZE).enumerate() {
            k.apply(p as u64, seq.0, page);
        }
        let versions = vec![seq.0; plain.len().div_ceil(PAGE_SIZE)];
        fsio::write_atomic(&self.cache_versions(i), &versions_bytes(&versions))?;
        fsio::write_atomic(&path, &enc)
    }

    /// Brings the cached images to the state of `m` (seq `m.meta.seq`): `page(i, entry)` gives
    /// the new bytes of entry `i`; `full[c]` is the whole image when there is no cache yet.
    pub(crate) fn update_head_cache<'s>(
        &self,
        m: &Manifest,
        page: &dyn Fn(usize, &DeltaEntry) -> &'s [u8],
        full: &[Option<Cow<'_, [u8]>>],
        key: Option<&CacheKey>,
    ) -> Result<(), StoreError> {
        let seq = m.meta.seq;
        for (i, image) in full.iter().enumerate() {
            if let Some(image) = image {
                self.write_full_cache_image(i, image, seq, key)?;
                continue;
            }
            let path = self.cache_image(i);
            let f = std::fs::File::options()
                .write(true)
                .open(&path)
                .map_err(fsio::io(&path))?;
            let mut versions = match key {
                Some(_) => read_versions(&fsio::read_capped(&self.cache_versions(i), 1 << 30)?),
                None => Vec::new(),
            };
            let component = u16::try_from(i).unwrap_or(u16::MAX);
            for (n, e) in m.entries.iter().enumerate() {
                if e.component != component {
                    continue;
                }
                let mut bytes = Cow::Borrowed(page(n, e));
                if let Some(k) = key {
                    let mut buf = bytes.into_owned();
                    k.apply(e.page.0, seq.0, &mut buf);
                    if let Some(v) =
                        versions.get_mut(usize::try_from(e.page.0).unwrap_or(usize::MAX))
                    {
                        *v = seq.0;
                    }
                    bytes = Cow::Owned(buf);
                }
                f.write_all_at(&bytes, e.page.0 * PAGE_SIZE as u64)
                    .map_err(fsio::io(&path))?;
            }
            if key.is_some() {
                fsio::write_atomic(&self.cache_versions(i), &versions_bytes(&versions))?;
            }
        }
        Ok(())
    }
}
