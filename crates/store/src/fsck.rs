//! Consistency check: every committed link and object present and intact; leftovers of
//! interrupted writes reported (and removed with `repair`).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Serialize;
use vmattest_core::chain::{ObjectId, SeqNo, link_digest};
use vmattest_core::wire::{HEADER_LEN, Kind};

use crate::{Store, StoreError};

#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub head: Option<u64>,
    pub links: u64,
    pub objects: u64,
    /// Problems with committed data; the store is damaged when this is not empty.
    pub errors: Vec<String>,
    /// Files left by interrupted writes; harmless.
    pub leftovers: Vec<PathBuf>,
    pub cache_current: bool,
    pub repaired: bool,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

impl Store {
    /// Checks the store; with `repair` (which needs the writer lock) removes leftovers.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        if repair && self._lock.is_none() {
            return Err(StoreError::Input(
                "repair needs the store opened for writing".into(),
            ));
        }
        let mut rep = FsckReport::default();
        let head = match self.head() {
            Ok(h) => h,
            Err(e) => {
                rep.errors.push(e.to_string());
                return Ok(rep);
            }
        };
        rep.head = head.map(|h| h.seq.0);
        let mut referenced: HashSet<ObjectId> = HashSet::new();
        if let Some(h) = head {
            let mut prev = self.params.alg().zero_digest();
            for s in 0..=h.seq.0 {
                let seq = SeqNo(s);
                let link = match self.read_link(seq) {
                    Ok(l) => l,
                    Err(e) => {
                        rep.errors.push(e.to_string());
                        continue;
                    }
                };
                rep.links += 1;
                if link.value().prev != prev {
                    rep.errors.push(format!(
                        "seq {seq}: previous link digest does not match link {}",
                        s.saturating_sub(1)
                    ));
                }
                prev = link_digest(&link);
                if s == h.seq.0 && prev != h.link {
                    rep.errors
                        .push(format!("seq {seq}: link does not match the digest in HEAD"));
                }
                referenced.insert(link.value().manifest);
                match self.read_manifest(link.value()) {
                    Ok(m) => {
                        for b in &m.batches {
                            referenced.insert(b.object);
                            match self.read_object(&b.object, Kind::Batch.max_body() + HEADER_LEN) {
                                Ok(_) => rep.objects += 1,
                                Err(e) => rep.errors.push(format!("seq {seq}: {e}")),
                            }
                        }
                        rep.objects += 1;
                    }
                    Err(e) => rep.errors.push(format!("seq {seq}: {e}")),
                }
            }
            rep.cache_current = self.cache_matches(&h);
        }
        let last = head.map_or(-1i128, |h| i128::from(h.seq.0));
        for entry in
            std::fs::read_dir(self.root.join("links")).map_err(crate::fsio::io(&self.root))?
        {
            let p = entry.map_err(crate::fsio::io(&self.root))?.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let seq = name
                .strip_suffix(".link")
                .and_then(|n| n.parse::<i128>().ok());
            if seq.is_none_or(|s| s > last) {
                rep.leftovers.push(p);
            }
        }
        for dir in
            std::fs::read_dir(self.root.join("objects")).map_err(crate::fsio::io(&self.root))?
        {
            let dir = dir.map_err(crate::fsio::io(&self.root))?.path();
            for f in std::fs::read_dir(&dir).map_err(crate::fsio::io(&dir))? {
                let p = f.map_err(crate::fsio::io(&dir))?.path();
                let hex = format!(
                    "{}{}",
                    dir.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default(),
                    p.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default()
                );
                let id = hex::decode(&hex)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(ObjectId);
                if id.is_none_or(|id| !referenced.contains(&id)) {
                    rep.leftovers.push(p);
                }
            }
        }
        for entry in
            std::fs::read_dir(self.root.join("tmp")).map_err(crate::fsio::io(&self.root))?
        {
            rep.leftovers
                .push(entry.map_err(crate::fsio::io(&self.root))?.path());
        }
        if repair {
            // The head cache is derived; discarding it makes the next take rebuild it.
            self.cache_invalidate()?;
            for p in &rep.leftovers {
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(p)
                } else {
                    std::fs::remove_file(p)
                };
            }
            rep.repaired = true;
        }
        Ok(rep)
    }
}
