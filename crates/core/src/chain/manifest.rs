//! Manifests: which pages changed at a seq, their new digests, and where their bytes are.
//!
//! Entries are sorted by (component, page) and unique. A `Data` entry's bytes are stored XORed
//! with the page's previous content, a `Literal` entry's as they are, in the batch objects listed
//! in order: batch 0 holds the first `pages` stored entries, batch 1 the next, and so on. A
//! `Zero` entry means the page is now all zeros and costs no storage.
//!
//! An anchor's manifest also lists, as `Carried` (or `Zero`) entries, every page changed since
//! the previous anchor that did not change at its own seq, and stores no XORs: a replay applies
//! the chain's first manifest, then its anchors, then only the links after the last anchor.

use rayon::prelude::*;

use super::{ComponentRoot, ObjectId, StateMeta, read_components, read_digest, write_components};
use crate::alg::{Digest, HashAlg, PageIndex, page_count};
use crate::record::RecordError;
use crate::wire::{Kind, Writer};

/// Most entries one manifest may list (a 64 GiB component's pages).
pub const MAX_ENTRIES: usize = 1 << 24;
pub const MAX_BATCHES: usize = 1 << 20;
/// Most pages one batch may hold (1 MiB of page data): a replay allocates a batch's pages at
/// once, so a signed manifest must not be able to ask for more.
pub const MAX_BATCH_PAGES: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageChange {
    /// The page is now all zeros; nothing is stored.
    Zero,
    /// The page's new bytes XOR its previous bytes are stored in a batch.
    Data,
    /// The page's new bytes are stored as they are (chosen when they compress better than the
    /// XOR, e.g. a page rewritten with unrelated content).
    Literal,
    /// An anchor's copy of a page that did not change at its seq, stored as it is.
    Carried,
}

impl PageChange {
    /// Whether the page has bytes in a batch.
    pub fn stored(self) -> bool {
        !matches!(self, PageChange::Zero)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaEntry {
    pub component: u16,
    pub page: PageIndex,
    pub change: PageChange,
    /// The page's new digest in its component's tree.
    pub digest: Digest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRef {
    pub object: ObjectId,
    /// Number of `Data` entries whose bytes this batch holds.
    pub pages: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub meta: StateMeta,
    pub components: Vec<ComponentRoot>,
    pub entries: Vec<DeltaEntry>,
    pub batches: Vec<BatchRef>,
    /// Whether this seq's bytes follow from the previous anchor's (or the chain's first seq's)
    /// and this manifest alone.
    pub anchor: bool,
}

const LEAF: u8 = 0;
const NODE: u8 = 1;
const EMPTY_DELTA: &[u8] = b"vmattest empty delta v1\0";
/// BLAKE3 chains key their leaves and parents instead of prefixing them, so that every input
/// is one 64-byte block and the wide kernel hashes 16 at a time.
const LEAF_KEY_CONTEXT: &[u8] = b"vmattest delta leaf v2";
const NODE_KEY_CONTEXT: &[u8] = b"vmattest delta node v2";
/// Leaves or parents hashed per parallel task.
const TASK: usize = 4096;

/// Merkle root over (component, page, new digest) entries, a lone last node carried up.
/// BLAKE3: leaves `keyed(K_leaf, comp || page || 0^22 || digest)`, parents
/// `keyed(K_node, left || right)`. SHA-2: leaves `H(0 || comp || page || digest)`, parents
/// `H(1 || left || right)`.
pub fn delta_digest(alg: HashAlg, entries: &[DeltaEntry]) -> Digest {
    if entries.is_empty() {
        return alg.hash(&[EMPTY_DELTA]);
    }
    if alg == HashAlg::Blake3 {
        return blake3_delta_digest(entries);
    }
    let mut level: Vec<Digest> = entries
        .par_iter()
        .map(|e| {
            alg.hash(&[
                &[LEAF],
                &e.component.to_be_bytes(),
                &e.page.0.to_be_bytes(),
                e.digest.as_bytes(),
            ])
        })
        .collect();
    while level.len() > 1 {
        level = level
            .par_chunks(2)
            .map(|pair| match pair {
                [l, r] => alg.hash(&[&[NODE], l.as_bytes(), r.as_bytes()]),
                [one] => *one,
                _ => alg.zero_digest(),
            })
            .collect();
    }
    level[0]
}

fn blake3_delta_digest(entries: &[DeltaEntry]) -> Digest {
    let leaf_key = *blake3::hash(LEAF_KEY_CONTEXT).as_bytes();
    let node_key = *blake3::hash(NODE_KEY_CONTEXT).as_bytes();
    let mut level = vec![0u8; entries.len() * 32];
    level
        .par_chunks_mut(TASK * 32)
        .zip(entries.par_chunks(TASK))
        .for_each(|(out, es)| {
            let mut msgs = vec![0u8; es.len() * 64];
            for (m, e) in msgs.chunks_exact_mut(64).zip(es) {
                m[..2].copy_from_slice(&e.component.to_be_bytes());
                m[2..10].copy_from_slice(&e.page.0.to_be_bytes());
                m[32..].copy_from_slice(&e.digest.as_bytes()[..32]);
            }
            crate::tree::keyed_blocks(&leaf_key, &msgs, out);
        });
    while level.len() > 32 {
        // Adjacent digests are already the parents' 64-byte messages.
        let pairs = level.len() / 64;
        let mut up = vec![0u8; (pairs + (level.len() / 32) % 2) * 32];
        up[..pairs * 32]
            .par_chunks_mut(TASK * 32)
            .zip(level[..pairs * 64].par_chunks(TASK * 64))
            .for_each(|(out, msgs)| crate::tree::keyed_blocks(&node_key, msgs, out));
        if pairs * 64 < level.len() {
            up[pairs * 32..].copy_from_slice(&level[pairs * 64..]);
        }
        level = up;
    }
    Digest::new(HashAlg::Blake3, &level).unwrap_or_else(|| HashAlg::Blake3.zero_digest())
}

impl Manifest {
    pub fn data_pages(&self) -> usize {
        self.entries.iter().filter(|e| e.change.stored()).count()
    }

    /// Entries for pages that changed at this seq (an anchor's carried pages left out).
    pub fn changed_pages(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.change != PageChange::Carried)
            .count()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.meta.write(&mut w);
        write_components(&mut w, &self.components);
        w.u32(u32::try_from(self.entries.len()).unwrap_or(u32::MAX));
        for e in &self.entries {
            let change = match e.change {
                PageChange::Zero => 0,
                PageChange::Data => 1,
                PageChange::Literal => 2,
                PageChange::Carried => 3,
            };
            w.u16(e.component)
                .u64(e.page.0)
                .u8(change)
                .raw(e.digest.as_bytes());
        }
        w.u32(u32::try_from(self.batches.len()).unwrap_or(u32::MAX));
        for b in &self.batches {
            w.raw(&b.object.0).u32(b.pages);
        }
        w.u8(u8::from(self.anchor));
        w.envelope(Kind::Manifest)
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, RecordError> {
        let (mut r, version) = crate::wire::open_versioned(bytes, Kind::Manifest)?;
        let meta = StateMeta::read(&mut r)?;
        let alg = meta.params.alg();
        let components = read_components(&mut r, alg)?;
        let n = r.len32("entry count", MAX_ENTRIES)?;
        let mut entries: Vec<DeltaEntry> = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let at = r.offset();
            let component = r.u16("entry component")?;
            let page = PageIndex(r.u64("entry page")?);
            let change = match r.u8("entry change")? {
                0 => PageChange::Zero,
                1 => PageChange::Data,
                2 => PageChange::Literal,
                3 => PageChange::Carried,
                other => {
                    return Err(r
                        .bad(
                            "entry change",
                            at + 10,
                            "expected 0 (zero), 1 (xor), 2 (literal) or 3 (carried)",
                            other,
                        )
                        .into());
                }
            };
            let digest = read_digest(&mut r, alg, "entry digest")?;
            let Some(c) = components.get(usize::from(component)) else {
                return Err(r
                    .bad(
                        "entry component",
                        at,
                        "an index into the component list",
                        component,
                    )
                    .into());
            };
            if page.0 >= page_count(c.len) {
                return Err(r
                    .bad("entry page", at + 2, "a page inside its component", page)
                    .into());
            }
            if let Some(prev) = entries.last()
                && (prev.component, prev.page) >= (component, page)
            {
                return Err(r
                    .bad(
                        "entry page",
                        at,
                        "entries sorted by component and page, no repeats",
                        page,
                    )
                    .into());
            }
            entries.push(DeltaEntry {
                component,
                page,
                change,
                digest,
            });
        }
        let nb = r.len32("batch count", MAX_BATCHES)?;
        let mut batches = Vec::with_capacity(nb.min(1 << 16));
        let mut covered = 0u64;
        for _ in 0..nb {
            let mut id = [0u8; 32];
            id.copy_from_slice(r.take("batch id", 32)?);
            let at = r.offset();
            let pages = r.u32("batch pages")?;
            if pages == 0 || pages > MAX_BATCH_PAGES {
                return Err(crate::wire::WireError::BadValue {
                    field: "batch pages",
                    offset: at,
                    expected: "1 to 256",
                    found: pages.to_string(),
                }
                .into());
            }
            covered += u64::from(pages);
            batches.push(BatchRef {
                object: ObjectId(id),
                pages,
            });
        }
        // Version 1 manifests end here and are never anchors.
        let anchor_at = r.offset();
        let anchor = match version {
            1 => false,
            _ => match r.u8("anchor")? {
                0 => false,
                1 => true,
                other => {
                    return Err(r.bad("anchor", anchor_at, "0 or 1", other).into());
                }
            },
        };
        let at = r.offset();
        r.finish(Kind::Manifest)?;
        let wrong = entries.iter().find(|e| {
            if anchor {
                e.change == PageChange::Data
            } else {
                e.change == PageChange::Carried
            }
        });
        if let Some(e) = wrong {
            return Err(crate::wire::WireError::BadValue {
                field: "entry change",
                offset: anchor_at,
                expected: if anchor {
                    "no xor entries in an anchor"
                } else {
                    "carried entries only in an anchor"
                },
                found: format!("component {} page {}", e.component, e.page.0),
            }
            .into());
        }
        let m = Manifest {
            meta,
            components,
            entries,
            batches,
            anchor,
        };
        if covered != m.data_pages() as u64 {
            return Err(crate::wire::WireError::BadValue {
                field: "batch pages",
                offset: at,
                expected: "batches covering every data entry",
                found: format!("{covered} pages for {} data entries", m.data_pages()),
            }
            .into());
        }
        Ok(m)
    }
}
