//! Consistency check: every committed link and object present and intact; leftovers of
//! interrupted writes reported (and removed with `repair`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use serde::Serialize;
use vmattest_core::chain::{ObjectId, SeqNo, link_digest};
use vmattest_core::wire::{HEADER_LEN, Kind};

use crate::{Store, StoreError, StoreWriter, batch};

/// Missing links reported before the check stops looking: a HEAD that names a huge seq must
/// not make fsck walk (or report) every number below it.
const MAX_MISSING_REPORTED: usize = 16;

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

impl std::fmt::Display for FsckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.head {
            Some(h) => write!(f, "head seq {h}")?,
            None => f.write_str("head none")?,
        }
        write!(
            f,
            ", {} link(s), {} object(s), {} leftover file(s){}, head cache {}",
            self.links,
            self.objects,
            self.leftovers.len(),
            if self.repaired { " removed" } else { "" },
            if self.cache_current {
                "current"
            } else {
                "stale (rebuilt by the next take)"
            }
        )?;
        for e in &self.errors {
            write!(f, "\nerror: {e}")?;
        }
        Ok(())
    }
}

impl StoreWriter {
    /// Checks the store and, when it is clean, removes leftovers and the head cache's stamp.
    /// A damaged store is never repaired: repair only removes what no committed link needs.
    pub fn repair(&self) -> Result<FsckReport, StoreError> {
        let (mut rep, leftovers) = self.check()?;
        if rep.is_clean() {
            // The head cache is derived; discarding it makes the next take rebuild it.
            self.cache_invalidate()?;
            for p in &leftovers {
                self.dir.remove_tree(p)?;
            }
            rep.repaired = true;
        }
        Ok(rep)
    }
}

impl Store {
    /// Checks the store: links, manifests, objects, leftovers, the head cache's stamp.
    pub fn fsck(&self) -> Result<FsckReport, StoreError> {
        Ok(self.check()?.0)
    }

    /// The report, and the leftovers as paths relative to the root.
    fn check(&self) -> Result<(FsckReport, Vec<PathBuf>), StoreError> {
        let mut rep = FsckReport::default();
        let head = match self.head() {
            Ok(h) => h,
            Err(e) => {
                rep.errors.push(e.to_string());
                return Ok((rep, Vec::new()));
            }
        };
        rep.head = head.map(|h| h.seq.0);
        let mut referenced: HashSet<ObjectId> = HashSet::new();
        if let Some(h) = head {
            self.fsck_links(h, &mut rep, &mut referenced);
            rep.cache_current = self.cache_matches(&h);
        }
        let leftovers = self.leftovers(head, &referenced)?;
        rep.leftovers = leftovers.iter().map(|p| self.dir.display(p)).collect();
        Ok((rep, leftovers))
    }

    fn fsck_links(&self, h: crate::Head, rep: &mut FsckReport, referenced: &mut HashSet<ObjectId>) {
        let mut prev = self.params.alg().zero_digest();
        let mut missing = 0usize;
        let mut s = h.base.0;
        let rebase = match self.rebase(&h) {
            Ok(r) => r,
            Err(e) => {
                rep.errors.push(e.to_string());
                return;
            }
        };
        loop {
            let seq = SeqNo(s);
            let read = match &rebase {
                // The rebase's own copy is the one verification reads.
                Some(r) if r.value().seq() == seq => Ok(r.value().link.clone()),
                _ => self.read_link(seq),
            };
            match read {
                Ok(link) => {
                    rep.links += 1;
                    let folded = rebase.as_ref().filter(|r| r.value().seq() == seq);
                    if folded.is_none() && link.value().prev != prev {
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
                    let manifest = folded.map_or(link.value().manifest, |r| r.value().manifest);
                    referenced.insert(manifest);
                    self.fsck_manifest(seq, &manifest, s == h.seq.0, rep, referenced);
                }
                Err(e) => {
                    rep.errors.push(e.to_string());
                    missing += 1;
                    if missing == MAX_MISSING_REPORTED && s < h.seq.0 {
                        rep.errors.push(format!(
                            "stopped at seq {seq}: HEAD names seq {}, and {MAX_MISSING_REPORTED} \
                             links below it are unreadable",
                            h.seq
                        ));
                        break;
                    }
                }
            }
            if s >= h.seq.0 {
                break;
            }
            s += 1;
        }
    }

    fn fsck_manifest(
        &self,
        seq: SeqNo,
        id: &ObjectId,
        is_head: bool,
        rep: &mut FsckReport,
        referenced: &mut HashSet<ObjectId>,
    ) {
        let m = match self.manifest_by_id(id, seq) {
            Ok(m) => m,
            Err(e) => {
                rep.errors.push(format!("seq {seq}: {e}"));
                return;
            }
        };
        rep.objects += 1;
        if is_head && let Err(e) = self.check_meta_bound(&m) {
            rep.errors.push(e.to_string());
        }
        for b in &m.batches {
            referenced.insert(b.object);
            match self.read_object(&b.object, Kind::Batch.max_body() + HEADER_LEN) {
                Ok(bytes) => {
                    rep.objects += 1;
                    match batch::is_sealed(&bytes) {
                        Ok(sealed) if sealed == self.meta.encrypted => {}
                        Ok(sealed) => rep.errors.push(format!(
                            "seq {seq}: batch {} is {}, store.json says encrypted = {}",
                            b.object,
                            if sealed { "encrypted" } else { "plain" },
                            self.meta.encrypted
                        )),
                        Err(e) => rep
                            .errors
                            .push(format!("seq {seq}: batch {}: {e}", b.object)),
                    }
                }
                Err(e) => rep.errors.push(format!("seq {seq}: {e}")),
            }
        }
    }

    /// Store-relative paths of everything no committed link needs: links past the head,
    /// unreferenced objects, files of the wrong type, anything in `tmp/`.
    pub(crate) fn leftovers(
        &self,
        head: Option<crate::Head>,
        referenced: &HashSet<ObjectId>,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        let links = Path::new("links");
        for (name, t) in self.dir.open_dir(links)?.entries()? {
            let seq = |suffix| {
                name.strip_suffix(suffix)
                    .and_then(|n: &str| n.parse::<u64>().ok())
            };
            // Links from the chain's first seq to the head, and the rebase at its first seq.
            let committed = t == FileType::RegularFile
                && head.is_some_and(|h| {
                    seq(".link").is_some_and(|s| h.base.0 <= s && s <= h.seq.0)
                        || seq(".rebase").is_some_and(|s| s == h.base.0 && s > 0)
                });
            if !committed {
                out.push(links.join(name));
            }
        }
        let objects = Path::new("objects");
        let objects_dir = self.dir.open_dir(objects)?;
        for (dname, t) in objects_dir.entries()? {
            let rel = objects.join(&dname);
            if t != FileType::Directory {
                out.push(rel);
                continue;
            }
            for (fname, t) in objects_dir.open_dir(Path::new(&dname))?.entries()? {
                let id = hex::decode(format!("{dname}{fname}"))
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(ObjectId);
                if t != FileType::RegularFile || id.is_none_or(|id| !referenced.contains(&id)) {
                    out.push(rel.join(fname));
                }
            }
        }
        let tmp = Path::new("tmp");
        for (name, _) in self.dir.open_dir(tmp)?.entries()? {
            out.push(tmp.join(name));
        }
        Ok(out)
    }
}
