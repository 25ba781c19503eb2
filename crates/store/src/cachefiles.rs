//! Where the head cache lives, and what a reader checks before it uses any of it: the stamp
//! must name the head, kept baseline digests must give the signed root. Readers (a replay)
//! need only this module; writing and rebuilding the cache (`cache`) builds on replay.

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

    pub(crate) fn cache_base_digests(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("head/{i}.base-digests"))
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
        let mut digests = self.dir.read_capped(rel, 1 << 30)?;
        if let Some(z) = self.zero_leaf() {
            for d in digests.chunks_exact_mut(z.len()) {
                if d.iter().all(|&b| b == 0) {
                    d.copy_from_slice(&z);
                }
            }
        }
        Ok(digests)
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
        let digests = self.read_digests(&self.cache_base_digests(i)).ok()?;
        let tree = ImageTree::from_page_digests(&self.params, c.len, digests, &[]).ok()?;
        (tree.root() == c.root).then_some(tree)
    }
}
