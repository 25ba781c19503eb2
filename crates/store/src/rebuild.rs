//! Rebuilding component bytes from page batches, one region at a time: bounded memory, regions
//! in parallel, large writes, zero pages left as holes in the output file.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use vmattest_core::alg::{PAGE_SIZE, PageIndex, page_count};
use vmattest_core::chain::{Manifest, PageChange, SeqNo};
use vmattest_core::tree::ImageTree;
use vmattest_core::wire::{HEADER_LEN, Kind};

use crate::crypt::PageKey;
use crate::pages::{ObjectFn, idx, nonzero_runs};
use crate::{Broken, Store, StoreError, batch, fsio};

/// Pages per region: 256 MiB of buffer per worker. Larger regions decode fewer batches twice
/// (a batch whose pages straddle two regions is decoded by both).
pub(crate) const REGION_PAGES: u64 = 65536;

static WRITE_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
const WRITE_CHUNK: usize = 1 << 20;

/// Batch decoding state, reused across batches.
pub(crate) struct Decoder {
    dctx: zstd::bulk::Decompressor<'static>,
    raw: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Result<Decoder, StoreError> {
        let dctx =
            zstd::bulk::Decompressor::new().map_err(|e| StoreError::Input(format!("zstd: {e}")))?;
        Ok(Decoder {
            dctx,
            raw: Vec::new(),
        })
    }
}

/// Per-worker state: a decoder and the region buffer, reused across regions.
pub(crate) struct Scratch {
    dec: Decoder,
    buf: Vec<u8>,
}

impl Scratch {
    pub fn new() -> Result<Scratch, StoreError> {
        Ok(Scratch {
            dec: Decoder::new()?,
            buf: Vec::new(),
        })
    }
}

pub(crate) struct Rebuild<'a> {
    store: &'a Store,
    manifests: &'a [Manifest],
    key: Option<&'a PageKey>,
    object: &'a ObjectFn<'a>,
    /// Per manifest: for each entry, its batch and offset (stored entries only).
    locs: Vec<Vec<(usize, usize)>>,
    /// Per manifest: each batch's raw length.
    batch_lens: Vec<Vec<usize>>,
    /// The manifests that make the last seq's bytes: the first, every anchor, and every one
    /// after the last anchor.
    apply: Vec<usize>,
    /// Per component and page, the position in `apply` of the last anchor that lists it (0:
    /// none); empty without anchors. An entry applied before that anchor is overwritten by it,
    /// so its batch need not be decoded for it.
    superseded: Vec<Vec<u32>>,
}

impl<'a> Rebuild<'a> {
    pub fn new(
        store: &'a Store,
        manifests: &'a [Manifest],
        key: Option<&'a PageKey>,
        object: &'a ObjectFn<'a>,
    ) -> Self {
        let locs: Vec<Vec<(usize, usize)>> = manifests.iter().map(locations).collect();
        let batch_lens = manifests
            .iter()
            .zip(&locs)
            .map(|(m, l)| {
                let mut lens = vec![0usize; m.batches.len()];
                for (e, &(b, _)) in m.entries.iter().zip(l) {
                    if let Some(x) = lens.get_mut(b) {
                        *x += page_len(m, e.component, e.page.0);
                    }
                }
                lens
            })
            .collect();
        let apply = replay_plan(&manifests.iter().map(|m| m.anchor).collect::<Vec<_>>());
        let superseded = superseded(manifests, &apply);
        Rebuild {
            store,
            manifests,
            key,
            object,
            locs,
            batch_lens,
            apply,
            superseded,
        }
    }
}

/// Positions of the manifests a replay applies, in order: an anchor stands for every link
/// between it and the previous anchor.
fn replay_plan(anchor: &[bool]) -> Vec<usize> {
    let last = anchor.iter().rposition(|&a| a).unwrap_or(0);
    let anchors = (1..last).filter(|&k| anchor[k]);
    std::iter::once(0)
        .chain(anchors)
        .chain(last.max(1)..anchor.len())
        .collect()
}

/// For each page, the position in `apply` of the last anchor that lists it.
fn superseded(manifests: &[Manifest], apply: &[usize]) -> Vec<Vec<u32>> {
    if !apply.iter().any(|&k| manifests[k].anchor) {
        return Vec::new();
    }
    let Some(first) = manifests.first() else {
        return Vec::new();
    };
    let mut out: Vec<Vec<u32>> = (first.components.iter())
        .map(|c| vec![0u32; idx(page_count(c.len))])
        .collect();
    for (i, &k) in apply
        .iter()
        .enumerate()
        .filter(|&(_, &k)| manifests[k].anchor)
    {
        let at = u32::try_from(i).unwrap_or(u32::MAX);
        for e in &manifests[k].entries {
            if let Some(slot) = (out.get_mut(usize::from(e.component)))
                .and_then(|pages| pages.get_mut(idx(e.page.0)))
            {
                *slot = at;
            }
        }
    }
    out
}

/// Where a stored entry's bytes are: batch index and byte offset in the batch.
fn locations(m: &Manifest) -> Vec<(usize, usize)> {
    let mut out = vec![(usize::MAX, 0); m.entries.len()];
    let (mut batch, mut left, mut off) = (0usize, m.batches.first().map_or(0, |b| b.pages), 0usize);
    for (i, e) in m.entries.iter().enumerate() {
        if !e.change.stored() {
            continue;
        }
        while left == 0 && batch + 1 < m.batches.len() {
            batch += 1;
            left = m.batches[batch].pages;
            off = 0;
        }
        out[i] = (batch, off);
        off += page_len(m, e.component, e.page.0);
        left = left.saturating_sub(1);
    }
    out
}

fn page_len(m: &Manifest, component: u16, page: u64) -> usize {
    let len = m.components[usize::from(component)].len;
    idx(len
        .saturating_sub(page * PAGE_SIZE as u64)
        .min(PAGE_SIZE as u64))
}

impl Rebuild<'_> {
    /// Position of `seq` among the manifests (a pruned chain starts above 0).
    fn pos(&self, seq: SeqNo) -> usize {
        let base = self.manifests.first().map_or(0, |m| m.meta.seq.0);
        idx(seq.0.saturating_sub(base))
    }

    /// Applies seq `seq`'s changes to `buf`, which holds component `comp` from page `first`.
    /// With `at`, the manifest's position in the replay plan, pages a later anchor overwrites
    /// are skipped (and batches holding only such pages not decoded).
    pub fn apply_region(
        &self,
        seq: SeqNo,
        at: Option<usize>,
        comp: usize,
        first: u64,
        buf: &mut [u8],
        dec: &mut Decoder,
    ) -> Result<(), StoreError> {
        let later = match at {
            Some(i) => self.superseded.get(comp).map(|s| (s, i)),
            None => None,
        };
        let m = &self.manifests[self.pos(seq)];
        let c = u16::try_from(comp).unwrap_or(u16::MAX);
        let end = first + buf.len().div_ceil(PAGE_SIZE) as u64;
        let lo = m
            .entries
            .partition_point(|e| (e.component, e.page.0) < (c, first));
        let hi = m
            .entries
            .partition_point(|e| (e.component, e.page.0) < (c, end));
        if lo == hi {
            return Ok(());
        }
        let locs = &self.locs[self.pos(seq)];
        let name = &m.components[comp].name;
        let mut current: Option<usize> = None;
        for (e, &(b, off)) in m.entries[lo..hi].iter().zip(&locs[lo..hi]) {
            if let Some((s, i)) = later
                && s.get(idx(e.page.0)).is_some_and(|&j| idx(u64::from(j)) > i)
            {
                continue;
            }
            let at = idx(e.page.0 - first) * PAGE_SIZE;
            let n = page_len(m, e.component, e.page.0);
            let page = &mut buf[at..at + n];
            if e.change == PageChange::Zero {
                page.fill(0);
                continue;
            }
            if current != Some(b) {
                self.decode(seq, name, e.page.0, b, dec)?;
                current = Some(b);
            }
            let src = dec
                .raw
                .get(off..off + n)
                .ok_or_else(|| StoreError::Verification {
                    seq,
                    broken: Broken::ShortBatch {
                        component: name.to_owned(),
                        page: e.page,
                    },
                })?;
            if matches!(e.change, PageChange::Literal | PageChange::Carried) {
                page.copy_from_slice(src);
            } else {
                page.iter_mut().zip(src).for_each(|(d, s)| *d ^= s);
            }
        }
        Ok(())
    }

    fn decode(
        &self,
        seq: SeqNo,
        comp: &str,
        page: u64,
        b: usize,
        dec: &mut Decoder,
    ) -> Result<(), StoreError> {
        let m = &self.manifests[self.pos(seq)];
        let bref = &m.batches[b];
        let expect = self.batch_lens[self.pos(seq)][b];
        let bytes =
            (self.object)(&bref.object, Kind::Batch.max_body() + HEADER_LEN).map_err(|e| {
                StoreError::Verification {
                    seq,
                    broken: Broken::BatchObject {
                        component: comp.to_owned(),
                        page,
                        cause: Box::new(e),
                    },
                }
            })?;
        batch::decode_into(&bytes, expect, self.key, &mut dec.dctx, &mut dec.raw).map_err(
            |detail| StoreError::Verification {
                seq,
                broken: Broken::Batch {
                    component: comp.to_owned(),
                    page,
                    object: bref.object,
                    detail,
                },
            },
        )
    }

    /// Rebuilds one region at the last seq and writes it to `file`; returns its page digests.
    pub fn rebuild_region(
        &self,
        comp: usize,
        first: u64,
        len: u64,
        file: &File,
        path: &Path,
        scratch: &mut Scratch,
    ) -> Result<Vec<u8>, StoreError> {
        let Scratch { dec, buf } = scratch;
        let start = first * PAGE_SIZE as u64;
        let bytes = (len - start).min(REGION_PAGES * PAGE_SIZE as u64);
        buf.clear();
        buf.resize(idx(bytes), 0);
        for (i, &k) in self.apply.iter().enumerate() {
            let seq = self.manifests[k].meta.seq;
            self.apply_region(seq, Some(i), comp, first, buf, dec)?;
        }
        let dlen = self.store.params.alg().digest_len();
        let pages = buf.len().div_ceil(PAGE_SIZE);
        let mut leaves = vec![0u8; pages * dlen];
        self.store
            .params
            .hash_pages(PageIndex(first), buf, &mut leaves);
        // Zero stretches stay holes in the sparse file.
        for run in nonzero_runs(buf) {
            let chunk = &buf[run.clone()];
            // Buffered writes to one file serialise on its inode lock anyway; taking turns
            // keeps the other worker hashing instead of spinning on that lock. Writes of 1 MiB
            // measure several times faster here than writes of the whole region.
            let _turn = WRITE_TURN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (j, piece) in chunk.chunks(WRITE_CHUNK).enumerate() {
                let at = start + (run.start + j * WRITE_CHUNK) as u64;
                file.write_all_at(piece, at).map_err(fsio::io(path))?;
            }
        }
        self.store.progress().advance(bytes);
        Ok(leaves)
    }

    /// Compares a region's rebuilt page digests with the chain's.
    pub fn check_region(
        &self,
        comp: usize,
        first: u64,
        leaves: &[u8],
        tree: &ImageTree,
    ) -> Result<(), StoreError> {
        let dlen = tree.alg().digest_len();
        let pages = leaves.len() / dlen;
        let want = &tree.page_digests()[idx(first) * dlen..(idx(first) + pages) * dlen];
        if leaves == want {
            return Ok(());
        }
        let bad = leaves
            .chunks(dlen)
            .zip(want.chunks(dlen))
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        Err(self.mismatch(
            comp,
            first + bad as u64,
            &leaves[bad * dlen..(bad + 1) * dlen],
        ))
    }

    /// Names the seq that last wrote `page`, whose rebuilt bytes disagree with the chain.
    fn mismatch(&self, comp: usize, page: u64, got: &[u8]) -> StoreError {
        let c = u16::try_from(comp).unwrap_or(u16::MAX);
        let seq = self
            .manifests
            .iter()
            .rposition(|m| {
                m.entries
                    .binary_search_by(|e| (e.component, e.page.0).cmp(&(c, page)))
                    .is_ok()
            })
            .unwrap_or(0);
        let m = &self.manifests[seq];
        let seq = m.meta.seq;
        let want = m
            .entries
            .iter()
            .find(|e| e.component == c && e.page.0 == page)
            .map_or_else(|| "a zero page".to_owned(), |e| e.digest.to_hex());
        StoreError::PageMismatch {
            seq,
            component: m.components[comp].name.clone(),
            page,
            detail: format!(
                "rebuilt page hashes to {}, the chain says {want}",
                hex::encode(got)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::replay_plan;

    #[test]
    fn a_replay_skips_the_links_an_anchor_stands_for() {
        let plan = |flags: &[u8]| replay_plan(&flags.iter().map(|&f| f == 1).collect::<Vec<_>>());
        assert_eq!(plan(&[0]), [0]);
        assert_eq!(plan(&[0, 0, 0]), [0, 1, 2]);
        assert_eq!(plan(&[0, 0, 1, 0, 0, 1, 0]), [0, 2, 5, 6]);
        assert_eq!(plan(&[0, 0, 0, 1]), [0, 3]);
        // A first manifest flagged an anchor (never written so) is applied once.
        assert_eq!(plan(&[1, 0]), [0, 1]);
    }
}
