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
        let leftovers = self.leftovers(head.map(|h| h.seq), &referenced)?;
        rep.leftovers = leftovers.iter().map(|p| self.dir.display(p)).collect();
        Ok((rep, leftovers))
    }

    fn fsck_links(&self, h: crate::Head, rep: &mut FsckReport, referenced: &mut HashSet<ObjectId>) {
        let mut prev = self.params.alg().zero_digest();
        let mut missing = 0usize;
        let mut s = 0u64;
        loop {
            let seq = SeqNo(s);
            match self.read_link(seq) {
                Ok(link) => {
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
                    self.fsck_manifest(seq, &link, s == h.seq.0, rep, referenced);
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
        link: &vmattest_core::chain::SignedLink,
        is_head: bool,
        rep: &mut FsckReport,
        referenced: &mut HashSet<ObjectId>,
    ) {
        let m = match self.read_manifest(link.value()) {
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
    fn leftovers(
        &self,
        head: Option<SeqNo>,
        referenced: &HashSet<ObjectId>,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut out = Vec::new();
        let links = Path::new("links");
        for (name, t) in self.dir.open_dir(links)?.entries()? {
            let seq = name
                .strip_suffix(".link")
                .and_then(|n| n.parse::<u64>().ok());
            let committed =
                t == FileType::RegularFile && seq.is_some_and(|s| head.is_some_and(|h| s <= h.0));
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
