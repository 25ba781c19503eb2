//! Where the head cache lives, and what a reader checks before it uses any of it: the stamp
//! must name the head, kept baseline digests must give the signed root. Readers (a replay)
//! need only this module; writing and rebuilding the cache (`cache`) builds on replay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vmattest_core::alg::{HashAlg, PAGE_SIZE, PageIndex};
use vmattest_core::chain::ComponentRoot;
use vmattest_core::tree::ImageTree;

use crate::{Head, Store, StoreError};

/// Written last: names the head the cache holds.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub seq: u64,
    pub link: String,
}

impl Store {
    pub(crate) fn cache_image(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("head/{i}.img"))
    }

    pub(crate) fn cache_digests(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("head/{i}.digests"))
    }

    /// Written by stores before base diffs; still read, and removed when a diff is written.
    pub(crate) fn cache_base_digests(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("head/{i}.base-digests"))
    }

    pub(crate) fn cache_base_diff(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("head/{i}.base-diff"))
    }

    pub(crate) fn cache_versions(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("head/{i}.versions"))
    }

    pub(crate) fn stamp_path(&self) -> PathBuf {
        PathBuf::from("head/stamp.json")
    }

    /// Whether the cache holds exactly `head`.
    pub(crate) fn cache_matches(&self, head: &Head) -> bool {
        let Ok(bytes) = self.dir.read_capped(&self.stamp_path(), 4096) else {
            return false;
        };
        let want = Stamp {
            seq: head.seq.0,
            link: head.link.to_hex(),
        };
        serde_json::from_slice::<Stamp>(&bytes).is_ok_and(|s| s == want)
    }

    /// The digest of a zero page where it does not depend on the page's position (dm-verity
    /// leaves): digest files hold zeros in its place, so an idle guest's mostly-zero RAM
    /// leaves them mostly holes.
    pub(crate) fn zero_leaf(&self) -> Option<Vec<u8>> {
        (self.params.alg() != HashAlg::Blake3).then(|| {
            let zero = [0u8; PAGE_SIZE];
            self.params
                .page_digest(PageIndex(0), &zero)
                .as_bytes()
                .to_vec()
        })
    }

    /// A digest file's page digests, the zero page's put back (see [`Store::zero_leaf`]).
    pub(crate) fn read_digests(&self, rel: &Path) -> Result<Vec<u8>, StoreError> {
        let mut digests = self.dir.read_capped(rel, MAX_DIGEST_FILE)?;
        if let Some(z) = self.zero_leaf() {
            for d in digests.chunks_exact_mut(z.len()) {
                if d.iter().all(|&b| b == 0) {
                    d.copy_from_slice(&z);
                }
            }
        }
        Ok(digests)
    }

    /// The baseline's page digests of component `i`: the head's with the kept differences
    /// put back (a store from before base diffs keeps them whole); `None` when missing or
    /// malformed. Callers check them against the signed root.
    pub(crate) fn base_digests(&self, i: usize) -> Option<Vec<u8>> {
        match self
            .dir
            .read_capped(&self.cache_base_diff(i), MAX_DIGEST_FILE)
        {
            Ok(diff) => {
                let head = self.read_digests(&self.cache_digests(i)).ok()?;
                apply_base_diff(head, &diff, self.params.alg().digest_len())
            }
            Err(_) => self.read_digests(&self.cache_base_digests(i)).ok(),
        }
    }

    /// Whether the cache keeps the bytes of a component of `len` bytes: always for one page
    /// at most (its root is a plain hash of them, which its digest cannot give), else when the
    /// store keeps head images.
    pub(crate) fn keeps_image(&self, len: u64) -> bool {
        self.meta.head_cache || len <= PAGE_SIZE as u64
    }

    /// Whether the head's plain bytes can be copied from the cache instead of decoded: images
    /// are kept, not encrypted, and stamped with `head`.
    pub(crate) fn head_in_cache(&self, head: &Head) -> bool {
        self.meta.head_cache && !self.meta.encrypted && self.cache_matches(head)
    }

    /// The baseline tree of component `i` from the kept digests, when they give the signed
    /// root (derived data: anything else is ignored and the tree is recomputed).
    pub(crate) fn cached_base_tree(&self, i: usize, c: &ComponentRoot) -> Option<ImageTree> {
        if c.len <= PAGE_SIZE as u64 {
            return None;
        }
        let digests = self.base_digests(i)?;
        let tree = ImageTree::from_page_digests(&self.params, c.len, digests, &[]).ok()?;
        (tree.root() == c.root).then_some(tree)
    }
}

/// Largest digest file, or base diff, read (a 32 TiB component of SHA-256 pages).
pub(crate) const MAX_DIGEST_FILE: usize = 1 << 30;

/// A base diff: `u64 LE` count of the baseline's page digests, then `(u64 LE page, digest)`
/// for each page whose baseline digest is not the head's, pages ascending. Every digest is the
/// real one (the zero page's too).
pub type BaseDiff = (usize, BTreeMap<usize, Vec<u8>>);

/// The entries of a base `base` against head digests `head`.
pub(crate) fn base_diff(base: &[u8], head: &[u8], dlen: usize) -> BaseDiff {
    let dlen = dlen.max(1);
    let kept = base
        .chunks_exact(dlen)
        .enumerate()
        .filter(|(p, want)| head.get(p * dlen..(p + 1) * dlen) != Some(*want))
        .map(|(p, want)| (p, want.to_vec()))
        .collect();
    (base.len() / dlen, kept)
}

pub fn encode_base_diff((n, kept): &BaseDiff) -> Vec<u8> {
    let mut out = (*n as u64).to_le_bytes().to_vec();
    for (p, d) in kept {
        out.extend_from_slice(&(*p as u64).to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

/// `None` when malformed: a partial entry, a page beyond the count or out of order.
pub fn parse_base_diff(diff: &[u8], dlen: usize) -> Option<BaseDiff> {
    let n = usize::try_from(u64::from_le_bytes(diff.get(..8)?.try_into().ok()?)).ok()?;
    let body = &diff[8..];
    let entry = 8usize.checked_add(dlen)?;
    if !body.len().is_multiple_of(entry) {
        return None;
    }
    let mut kept = BTreeMap::new();
    let mut last = None;
    for e in body.chunks_exact(entry) {
        let p = usize::try_from(u64::from_le_bytes(e[..8].try_into().ok()?)).ok()?;
        if p >= n || last.is_some_and(|l| p <= l) {
            return None;
        }
        kept.insert(p, e[8..].to_vec());
        last = Some(p);
    }
    Some((n, kept))
}

/// The baseline's page digests from the head's and an encoded [`BaseDiff`]; `None` also for
/// a count beyond what a digest file may hold.
pub fn apply_base_diff(mut head: Vec<u8>, diff: &[u8], dlen: usize) -> Option<Vec<u8>> {
    let (n, kept) = parse_base_diff(diff, dlen)?;
    let len = n.checked_mul(dlen).filter(|l| *l <= MAX_DIGEST_FILE)?;
    head.resize(len, 0);
    for (p, d) in kept {
        head.get_mut(p * dlen..(p + 1) * dlen)?.copy_from_slice(&d);
    }
    Some(head)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_base_diff_gives_the_base_back_and_refuses_bad_entries() {
        let head: Vec<u8> = (0..40u8).collect();
        let mut base = head.clone();
        base[12..16].copy_from_slice(&[9; 4]);
        base.extend_from_slice(&[7; 8]);
        let diff = encode_base_diff(&base_diff(&base, &head, 4));
        assert_eq!(diff.len(), 8 + 3 * 12);
        assert_eq!(apply_base_diff(head.clone(), &diff, 4).unwrap(), base);
        // The same digests: no entries.
        assert_eq!(
            encode_base_diff(&base_diff(&head, &head, 4)),
            10u64.to_le_bytes().to_vec()
        );
        // A shorter base drops the head's tail.
        assert_eq!(
            apply_base_diff(
                head.clone(),
                &encode_base_diff(&base_diff(&head[..8], &head, 4)),
                4
            )
            .unwrap(),
            head[..8].to_vec()
        );
        assert!(apply_base_diff(head.clone(), &diff[..diff.len() - 1], 4).is_none());
        assert!(apply_base_diff(head.clone(), &diff[..5], 4).is_none());
        let mut beyond = diff.clone();
        beyond[8..16].copy_from_slice(&99u64.to_le_bytes());
        assert!(apply_base_diff(head.clone(), &beyond, 4).is_none());
        let mut huge = diff.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(apply_base_diff(head.clone(), &huge, 4).is_none());
        let mut unordered = diff.clone();
        unordered[20..28].copy_from_slice(&0u64.to_le_bytes());
        assert!(apply_base_diff(head, &unordered, 4).is_none());
    }
}
