//! Image trees over 4 KiB pages.
//!
//! * BLAKE3: BLAKE3's own tree, so the root is `b3sum IMAGE`. Pages are subtrees at their
//!   offsets; above them the tree pairs nodes level by level and carries a lone last node up
//!   unchanged, which is exactly BLAKE3's left-balanced shape. The final pair is merged with
//!   the root flag. An image of at most one page has the plain BLAKE3 hash as its root.
//! * SHA-256/SHA-384: the dm-verity format 1 tree, so the root is what
//!   `veritysetup format --hash ALG --salt HEX --data-block-size 4096 --hash-block-size 4096`
//!   prints. A single-page image's root is its leaf digest (veritysetup's rule).
//!
//! Edge rules: an image whose length is not a multiple of 4096 has a partial last page.
//! BLAKE3 hashes the bytes as they are; dm-verity hashes the last page zero-padded (veritysetup
//! itself would silently ignore the tail, which an attestation must not). The exact length is
//! part of every record. An empty image has the BLAKE3 root of the empty input; dm-verity has
//! no tree for zero blocks, so it is refused.

mod blake3;
pub(crate) use blake3::keyed_blocks;
mod proof;
mod verity;

#[cfg(test)]
mod tests;

use rayon::prelude::*;

pub use proof::{MAX_PROOF_PAGES, PageProof, ProofError, read_alg};

use crate::alg::{Digest, HashAlg, PAGE_SIZE, PageIndex, page_count};
use crate::class::{Classify, ErrorClass};

/// Longest salt dm-verity accepts.
pub const MAX_SALT_LEN: usize = 256;

/// Pages handed to one worker at a time.
const PAGES_PER_TASK: usize = 64;

/// Errors building or updating a tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("empty image: a dm-verity tree ({alg}) needs at least one 4096-byte block")]
    EmptyImage { alg: HashAlg },
    #[error("salt of {found} bytes: expected at most {MAX_SALT_LEN}")]
    SaltTooLong { found: usize },
    #[error("a salt was given for {alg}, which takes none")]
    SaltNotAllowed { alg: HashAlg },
    #[error("image is {found} bytes: expected {expected} bytes, the size the tree was built for")]
    LengthChanged { expected: u64, found: u64 },
    #[error("page {page} is outside the image of {pages} pages")]
    PageOutOfRange { page: PageIndex, pages: u64 },
}

/// Every tree error is a bad parameter or an image of the wrong shape; none is a failed check.
impl Classify for TreeError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}

/// Receives progress reports (bytes hashed) from worker threads.
pub trait Progress: Sync {
    fn advance(&self, bytes: u64);
    /// Announces (or corrects) the total amount of work, when it is known only later.
    fn set_total(&self, _bytes: u64) {}
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}

/// Tree parameters: algorithm and (dm-verity only) salt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeParams {
    alg: HashAlg,
    salt: Vec<u8>,
}

impl TreeParams {
    pub fn new(alg: HashAlg, salt: &[u8]) -> Result<TreeParams, TreeError> {
        if salt.len() > MAX_SALT_LEN {
            return Err(TreeError::SaltTooLong { found: salt.len() });
        }
        if !salt.is_empty() && !alg.takes_salt() {
            return Err(TreeError::SaltNotAllowed { alg });
        }
        Ok(TreeParams {
            alg,
            salt: salt.to_vec(),
        })
    }

    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// Digests of consecutive pages `data` starting at page `first`, written flat to `out`
    /// (`digest_len` bytes per page; only the last page may be short).
    pub fn hash_pages(&self, first: PageIndex, data: &[u8], out: &mut [u8]) {
        hash_leaves_at(self, first.0, data, out, &NoProgress, &[]);
    }

    /// Digest of page `index` with bytes `data` (a full page, or the image's short last one).
    pub fn page_digest(&self, index: PageIndex, data: &[u8]) -> Digest {
        let mut out = [0u8; crate::alg::MAX_DIGEST_LEN];
        let n = self.alg.digest_len();
        self.leaf(index.0, data, &mut out[..n]);
        digest(self.alg, &out[..n])
    }

    /// Children per parent: 2 for BLAKE3, 128 (SHA-256) or 64 (SHA-384) for dm-verity.
    fn arity(&self) -> usize {
        match self.alg {
            HashAlg::Blake3 => 2,
            alg => verity::arity(alg),
        }
    }

    /// Node counts per level for `pages` leaves, from the leaves up to the single root.
    fn level_lens(&self, pages: u64) -> Vec<u64> {
        let mut lens = vec![pages];
        let mut n = pages;
        while n > 1 {
            n = n.div_ceil(self.arity() as u64);
            lens.push(n);
        }
        lens
    }

    /// Digest of one page; `data` may be shorter than a page only for the last one.
    fn leaf(&self, index: u64, data: &[u8], out: &mut [u8]) {
        match self.alg {
            HashAlg::Blake3 => {
                out.copy_from_slice(&blake3::page_cv(blake3::PageAt { index, data }))
            }
            alg => verity::hash_block(alg, &self.salt, data, out),
        }
    }

    /// Parent of one group of children (flat digests); `root` marks the final step.
    fn combine(&self, group: &[u8], root: bool, out: &mut [u8]) {
        match self.alg {
            HashAlg::Blake3 => {
                if group.len() == 32 {
                    out.copy_from_slice(group);
                } else {
                    out.copy_from_slice(&blake3::merge(&group[..32], &group[32..], root));
                }
            }
            alg => verity::hash_group(alg, &self.salt, group, out),
        }
    }

    /// Root of an image of at most one page, from its bytes.
    fn small_root(&self, data: &[u8]) -> Result<Digest, TreeError> {
        let alg = self.alg;
        let mut out = [0u8; crate::alg::MAX_DIGEST_LEN];
        let out = &mut out[..alg.digest_len()];
        match alg {
            HashAlg::Blake3 => out.copy_from_slice(&blake3::small_root(data)),
            _ if data.is_empty() => return Err(TreeError::EmptyImage { alg }),
            _ => self.leaf(0, data, out),
        }
        Ok(digest(alg, out))
    }
}

fn digest(alg: HashAlg, bytes: &[u8]) -> Digest {
    // The callers size `bytes` from `alg`, so this cannot fail.
    Digest::new(alg, bytes).unwrap_or_else(|| unreachable!("digest length is fixed by alg"))
}

/// A measured image: every page digest and every interior node, plus the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTree {
    params: TreeParams,
    len: u64,
    /// `levels[0]` holds the page digests; each level is flat, one digest after another.
    /// The root is kept apart because BLAKE3's root is a hash, not a chaining value.
    levels: Vec<Vec<u8>>,
    root: Digest,
}

impl ImageTree {
    /// Measures `image` on the rayon pool.
    pub fn build(
        params: &TreeParams,
        image: &[u8],
        progress: &dyn Progress,
    ) -> Result<ImageTree, TreeError> {
        let len = image.len() as u64;
        let pages = page_count(len);
        let dlen = params.alg.digest_len();
        let mut leaves = vec![0u8; usize_of(pages) * dlen];
        hash_leaves(params, image, &mut leaves, progress);
        ImageTree::from_page_digests(params, len, leaves, image)
    }

    /// Like [`ImageTree::build`] for an image whose pages in `holes` (sorted page ranges) are
    /// known to be zero, as a sparse file's holes are: those pages are never read.
    pub fn build_with_holes(
        params: &TreeParams,
        image: &[u8],
        holes: &[std::ops::Range<u64>],
        progress: &dyn Progress,
    ) -> Result<ImageTree, TreeError> {
        let len = image.len() as u64;
        let pages = page_count(len);
        let dlen = params.alg.digest_len();
        let mut leaves = vec![0u8; usize_of(pages) * dlen];
        hash_leaves_at(params, 0, image, &mut leaves, progress, holes);
        ImageTree::from_page_digests(params, len, leaves, image)
    }

    /// A tree whose listed pages have the given digests and every other page is zeros (the
    /// zero pages are hashed here). `small_image` is needed only for images of at most one page.
    pub fn from_sparse_page_digests(
        params: &TreeParams,
        len: u64,
        listed: &[(PageIndex, Digest)],
        small_image: &[u8],
    ) -> Result<ImageTree, TreeError> {
        let pages = page_count(len);
        let dlen = params.alg.digest_len();
        let mut leaves = vec![0u8; usize_of(pages) * dlen];
        let mut is_listed = vec![false; usize_of(pages)];
        for (p, d) in listed {
            let i = usize_of(p.0);
            if i >= is_listed.len() {
                return Err(TreeError::PageOutOfRange { page: *p, pages });
            }
            is_listed[i] = true;
            leaves[i * dlen..(i + 1) * dlen].copy_from_slice(d.as_bytes());
        }
        // Zero pages in runs of up to PAGES_PER_TASK, hashed in parallel.
        let task = PAGES_PER_TASK;
        leaves
            .par_chunks_mut(task * dlen)
            .zip(is_listed.par_chunks(task))
            .enumerate()
            .for_each(|(t, (out, listed))| {
                let base = (t * task) as u64;
                let mut i = 0;
                while i < listed.len() {
                    if listed[i] {
                        i += 1;
                        continue;
                    }
                    let start = i;
                    while i < listed.len() && !listed[i] {
                        i += 1;
                    }
                    let first = base + start as u64;
                    let last_len = usize_of(
                        (len - (base + i as u64 - 1) * PAGE_SIZE as u64).min(PAGE_SIZE as u64),
                    );
                    let bytes = (i - start - 1) * PAGE_SIZE + last_len;
                    hash_leaves_at(
                        params,
                        first,
                        &ZERO_TASK[..bytes],
                        &mut out[start * dlen..i * dlen],
                        &NoProgress,
                        &[],
                    );
                }
            });
        ImageTree::from_page_digests(params, len, leaves, small_image)
    }

    /// Rebuilds a tree from stored page digests (as returned by [`ImageTree::page_digests`]).
    /// `image` is needed only for images of at most one page, whose root is a plain hash.
    pub fn from_page_digests(
        params: &TreeParams,
        len: u64,
        leaves: Vec<u8>,
        small_image: &[u8],
    ) -> Result<ImageTree, TreeError> {
        let pages = page_count(len);
        let dlen = params.alg.digest_len();
        if leaves.len() as u64 != pages * dlen as u64 {
            return Err(TreeError::LengthChanged {
                expected: pages * dlen as u64,
                found: leaves.len() as u64,
            });
        }
        let mut tree = ImageTree {
            params: params.clone(),
            len,
            levels: vec![leaves],
            root: params.alg.zero_digest(),
        };
        if pages <= 1 {
            tree.root = params.small_root(small_image)?;
            return Ok(tree);
        }
        let lens = params.level_lens(pages);
        for k in 1..lens.len() {
            let next = hash_level(params, &tree.levels[k - 1], k + 1 == lens.len());
            tree.levels.push(next);
        }
        if let Some(top) = tree.levels.pop() {
            tree.root = digest(params.alg, &top);
        }
        Ok(tree)
    }

    pub fn params(&self) -> &TreeParams {
        &self.params
    }

    pub fn alg(&self) -> HashAlg {
        self.params.alg
    }

    pub fn root(&self) -> Digest {
        self.root
    }

    /// Image length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> u64 {
        page_count(self.len)
    }

    /// Digest of page `index`: a BLAKE3 chaining value or a dm-verity data-block hash.
    pub fn page_digest(&self, index: PageIndex) -> Option<Digest> {
        let dlen = self.alg().digest_len();
        let start = usize::try_from(index.0).ok()?.checked_mul(dlen)?;
        let bytes = self.levels.first()?.get(start..start + dlen)?;
        Digest::new(self.alg(), bytes)
    }

    /// Every page digest, flat.
    pub fn page_digests(&self) -> &[u8] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// Rehashes the listed pages of `image` (same length as before) and only the nodes above
    /// them. Returns the new root.
    pub fn update_pages(
        &mut self,
        image: &[u8],
        changed: &[PageIndex],
    ) -> Result<Digest, TreeError> {
        let found = image.len() as u64;
        if found != self.len {
            return Err(TreeError::LengthChanged {
                expected: self.len,
                found,
            });
        }
        let pages = self.pages();
        let mut dirty: Vec<u64> = changed.iter().map(|p| p.0).collect();
        dirty.sort_unstable();
        dirty.dedup();
        if let Some(&bad) = dirty.iter().find(|&&p| p >= pages) {
            return Err(TreeError::PageOutOfRange {
                page: PageIndex(bad),
                pages,
            });
        }
        let dlen = self.alg().digest_len();
        let params = self.params.clone();
        let fresh: Vec<(u64, Vec<u8>)> = dirty
            .par_iter()
            .map(|&p| {
                let mut d = vec![0u8; dlen];
                params.leaf(p, page_slice(image, p), &mut d);
                (p, d)
            })
            .collect();
        for (p, d) in &fresh {
            let at = usize_of(*p) * dlen;
            self.levels[0][at..at + dlen].copy_from_slice(d);
        }
        if pages <= 1 {
            self.root = params.small_root(image)?;
            return Ok(self.root);
        }
        self.rehash_above(dirty);
        Ok(self.root)
    }

    /// Recomputes every node above the sorted, unique leaf indices `dirty`.
    fn rehash_above(&mut self, mut dirty: Vec<u64>) {
        let params = self.params.clone();
        let dlen = params.alg.digest_len();
        let arity = params.arity() as u64;
        let lens = params.level_lens(self.pages());
        for k in 1..lens.len() {
            dirty = dirty.iter().map(|p| p / arity).collect();
            dirty.dedup();
            let below = &self.levels[k - 1];
            let group = |p: u64| {
                let lo = usize_of(p * arity) * dlen;
                &below[lo..(usize_of((p + 1) * arity) * dlen).min(below.len())]
            };
            if k + 1 == lens.len() {
                let mut buf = [0u8; crate::alg::MAX_DIGEST_LEN];
                params.combine(group(0), true, &mut buf[..dlen]);
                self.root = digest(params.alg, &buf[..dlen]);
                break;
            }
            let fresh: Vec<u8> = if params.alg == HashAlg::Blake3 {
                // Gather the dirty pairs and merge them through the wide kernel.
                let mut pairs = Vec::with_capacity(dirty.len() * 64);
                let mut lone = Vec::new();
                for (i, &p) in dirty.iter().enumerate() {
                    match group(p) {
                        g if g.len() == 64 => pairs.extend_from_slice(g),
                        g => lone.push((i, g)),
                    }
                }
                let mut merged = vec![0u8; pairs.len() / 2];
                merged
                    .par_chunks_mut(32 * 1024)
                    .zip(pairs.par_chunks(64 * 1024))
                    .for_each(|(out, src)| blake3::parents_into(blake3::platform(), src, out));
                let mut out = Vec::with_capacity(dirty.len() * 32);
                let (mut m, mut l) = (merged.chunks(32), lone.into_iter().peekable());
                for i in 0..dirty.len() {
                    match l.peek() {
                        Some((li, g)) if *li == i => {
                            out.extend_from_slice(g);
                            l.next();
                        }
                        _ => out.extend_from_slice(m.next().unwrap_or(&[0; 32])),
                    }
                }
                out
            } else {
                dirty
                    .par_iter()
                    .flat_map_iter(|&p| {
                        let mut buf = [0u8; crate::alg::MAX_DIGEST_LEN];
                        params.combine(group(p), false, &mut buf[..dlen]);
                        buf[..dlen].to_vec()
                    })
                    .collect()
            };
            for (&p, d) in dirty.iter().zip(fresh.chunks(dlen)) {
                let at = usize_of(p) * dlen;
                self.levels[k][at..at + dlen].copy_from_slice(d);
            }
        }
    }

    /// Sets page digests directly (no hashing of page bytes) and recomputes the nodes above
    /// them. `image` is consulted only for images of at most one page, whose root is a plain
    /// hash of the bytes.
    pub fn set_page_digests(
        &mut self,
        updates: &[(PageIndex, Digest)],
        image: &[u8],
    ) -> Result<Digest, TreeError> {
        let pages = self.pages();
        let dlen = self.alg().digest_len();
        let mut dirty = Vec::with_capacity(updates.len());
        for (p, d) in updates {
            if p.0 >= pages {
                return Err(TreeError::PageOutOfRange { page: *p, pages });
            }
            let at = usize_of(p.0) * dlen;
            self.levels[0][at..at + dlen].copy_from_slice(d.as_bytes());
            dirty.push(p.0);
        }
        if pages <= 1 {
            self.root = self.params.small_root(image)?;
            return Ok(self.root);
        }
        dirty.sort_unstable();
        dirty.dedup();
        self.rehash_above(dirty);
        Ok(self.root)
    }

    /// Proof that pages `first .. first + count` of `image` belong under the root.
    pub fn prove(
        &self,
        image: &[u8],
        first: PageIndex,
        count: u64,
    ) -> Result<PageProof, ProofError> {
        proof::prove(self, image, first, count)
    }

    /// The dm-verity hash device (superblock and hash blocks) for `veritysetup verify`;
    /// `None` for BLAKE3 trees.
    pub fn verity_hash_device(&self, uuid: [u8; 16]) -> Option<Vec<u8>> {
        if !self.alg().takes_salt() {
            return None;
        }
        // A one-block image has no hash blocks: its root is the block's own digest.
        let hashed: Vec<&[u8]> = match self.pages() {
            0 | 1 => Vec::new(),
            _ => self.levels.iter().rev().map(Vec::as_slice).collect(),
        };
        Some(verity::hash_device(
            self.alg(),
            self.salt(),
            self.pages(),
            &hashed,
            uuid,
        ))
    }

    fn salt(&self) -> &[u8] {
        &self.params.salt
    }

    fn level(&self, k: usize) -> &[u8] {
        self.levels.get(k).map_or(&[], Vec::as_slice)
    }
}

/// Bytes of page `p` (the last page may be short).
fn page_slice(image: &[u8], p: u64) -> &[u8] {
    let start = usize_of(p) * PAGE_SIZE;
    &image[start..(start + PAGE_SIZE).min(image.len())]
}

/// `u64` counts of things that live in memory always fit a `usize` on 64-bit hosts.
fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn hash_leaves(params: &TreeParams, image: &[u8], out: &mut [u8], progress: &dyn Progress) {
    hash_leaves_at(params, 0, image, out, progress, &[]);
}

/// A page range of zeros for any task, so that hole pages are hashed without being read.
static ZERO_TASK: [u8; PAGES_PER_TASK * PAGE_SIZE] = [0; PAGES_PER_TASK * PAGE_SIZE];

/// Whether any page of `[first, first + n)` lies in one of the sorted `holes`.
fn touches_hole(holes: &[std::ops::Range<u64>], first: u64, n: u64) -> bool {
    let i = holes.partition_point(|r| r.end <= first);
    holes.get(i).is_some_and(|r| r.start < first + n)
}

/// Whether pages `[first, first + n)` lie in one of the sorted `holes`.
pub fn in_hole(holes: &[std::ops::Range<u64>], first: u64, n: u64) -> bool {
    let i = holes.partition_point(|r| r.start <= first);
    i > 0 && holes[i - 1].end >= first + n
}

/// Page digests of `image`, whose first page is page `first` of a larger image.
fn hash_leaves_at(
    params: &TreeParams,
    first: u64,
    image: &[u8],
    out: &mut [u8],
    progress: &dyn Progress,
    holes: &[std::ops::Range<u64>],
) {
    let base = first;
    let dlen = params.alg.digest_len();
    let task_bytes = PAGES_PER_TASK * PAGE_SIZE;
    image
        .par_chunks(task_bytes)
        .zip(out.par_chunks_mut(PAGES_PER_TASK * dlen))
        .enumerate()
        .for_each(|(t, (data, out))| {
            let first = base + (t * PAGES_PER_TASK) as u64;
            let n = data.len().div_ceil(PAGE_SIZE) as u64;
            let mixed;
            let data = if in_hole(holes, first, n) {
                &ZERO_TASK[..data.len()]
            } else if touches_hole(holes, first, n) {
                // Part hole: a copy of the task with the hole pages left zero.
                let mut buf = vec![0u8; data.len()];
                for (i, (page, b)) in data
                    .chunks(PAGE_SIZE)
                    .zip(buf.chunks_mut(PAGE_SIZE))
                    .enumerate()
                {
                    if !in_hole(holes, first + i as u64, 1) {
                        b.copy_from_slice(page);
                    }
                }
                mixed = buf;
                &mixed[..]
            } else {
                data
            };
            let full = data.len() / PAGE_SIZE * PAGE_SIZE;
            if params.alg == HashAlg::Blake3 {
                blake3::full_pages_cv(first, &data[..full], &mut out[..full / PAGE_SIZE * 32]);
                if full < data.len() {
                    params.leaf(
                        first + (full / PAGE_SIZE) as u64,
                        &data[full..],
                        &mut out[full / PAGE_SIZE * 32..],
                    );
                }
            } else {
                // A verity leaf does not depend on its position (a short page is zero-padded),
                // so every zero page has one digest: hash it once, copy it for the others.
                // Guest RAM and disks are mostly zero pages.
                let mut zero: Option<[u8; crate::alg::MAX_DIGEST_LEN]> = None;
                for (i, (page, d)) in data.chunks(PAGE_SIZE).zip(out.chunks_mut(dlen)).enumerate() {
                    if crate::alg::is_zero(page) {
                        let z = zero.get_or_insert_with(|| {
                            let mut z = [0u8; crate::alg::MAX_DIGEST_LEN];
                            params.leaf(0, &[0u8; PAGE_SIZE], &mut z[..dlen]);
                            z
                        });
                        d.copy_from_slice(&z[..dlen]);
                    } else {
                        params.leaf(first + i as u64, page, d);
                    }
                }
            }
            progress.advance(data.len() as u64);
        });
}

/// Next level up; when `root` is set the result is the single root.
fn hash_level(params: &TreeParams, level: &[u8], root: bool) -> Vec<u8> {
    let dlen = params.alg.digest_len();
    let group = params.arity() * dlen;
    let n_parents = level.len().div_ceil(group);
    let mut out = vec![0u8; n_parents * dlen];
    if params.alg == HashAlg::Blake3 && !root {
        // Full pairs go through the wide kernel; a lone last node is carried up.
        const TASK: usize = 4096;
        let pairs = level.len() / 64;
        let (paired, lone) = level.split_at(pairs * 64);
        paired
            .par_chunks(TASK * 64)
            .zip(out[..pairs * 32].par_chunks_mut(TASK * 32))
            .for_each(|(src, dst)| blake3::parents_into(blake3::platform(), src, dst));
        out[pairs * 32..].copy_from_slice(lone);
        return out;
    }
    level
        .par_chunks(group)
        .zip(out.par_chunks_mut(dlen))
        .for_each(|(g, d)| params.combine(g, root, d));
    out
}
