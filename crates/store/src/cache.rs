//! The head cache: the head state's images and page digests, so that a take can XOR changed
//! pages against their previous bytes without replaying the chain. It is derived data: a stamp
//! written last names the head it matches, and a missing or stale stamp makes the next take
//! rebuild it from the verified chain.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vmattest_core::tree::ImageTree;

use crate::{Head, Store, StoreError, fsio};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    seq: u64,
    link: String,
}

impl Store {
    pub(crate) fn cache_image(&self, i: usize) -> PathBuf {
        self.root.join("head").join(format!("{i}.img"))
    }

    pub(crate) fn cache_digests(&self, i: usize) -> PathBuf {
        self.root.join("head").join(format!("{i}.digests"))
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

    /// Loads the cached trees of `n` components with lengths `lens`.
    pub(crate) fn cache_trees(&self, lens: &[u64]) -> Result<Vec<ImageTree>, StoreError> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                let digests = fsio::read_capped(&self.cache_digests(i), 1 << 30)?;
                let small = if len <= 4096 {
                    fsio::read_capped(&self.cache_image(i), 4096)?
                } else {
                    Vec::new()
                };
                ImageTree::from_page_digests(&self.params, len, digests, &small).map_err(|e| {
                    StoreError::Corrupt {
                        file: self.cache_digests(i),
                        detail: e.to_string(),
                    }
                })
            })
            .collect()
    }
}
