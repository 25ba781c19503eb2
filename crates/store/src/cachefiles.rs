//! Where the head cache lives, and what a reader checks before it uses any of it: the stamp
//! must name the head, kept baseline digests must give the signed root. Readers (a replay)
//! need only this module; writing and rebuilding the cache (`cache`) builds on replay.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vmattest_core::alg::PAGE_SIZE;
use vmattest_core::chain::ComponentRoot;
use vmattest_core::tree::ImageTree;

use crate::{Head, Store};

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

    /// The baseline tree of component `i` from the kept digests, when they give the signed
    /// root (derived data: anything else is ignored and the tree is recomputed).
    pub(crate) fn cached_base_tree(&self, i: usize, c: &ComponentRoot) -> Option<ImageTree> {
        if c.len <= PAGE_SIZE as u64 {
            return None;
        }
        let digests = self
            .dir
            .read_capped(&self.cache_base_digests(i), 1 << 30)
            .ok()?;
        let tree = ImageTree::from_page_digests(&self.params, c.len, digests, &[]).ok()?;
        (tree.root() == c.root).then_some(tree)
    }
}
