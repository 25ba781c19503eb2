//! Inclusion proofs for a page range, checked without the image.
//!
//! A proof carries the pages themselves, the image length (which fixes the tree's shape) and,
//! level by level, the sibling digests that complete each group the range touches: the ones
//! left of the range, then the ones right of it. The verifier rebuilds the root from those and
//! compares it with the root the proof claims; the caller then checks that root against a
//! signed record or a root it trusts.

use crate::alg::{Digest, HashAlg, PAGE_SIZE, PageIndex, page_count};
use crate::class::{Classify, ErrorClass};
use crate::wire::{Kind, Reader, WireError, Writer};

use super::{ImageTree, MAX_SALT_LEN, TreeError, TreeParams, usize_of};

/// Most pages one proof may carry (16 MiB of page data).
pub const MAX_PROOF_PAGES: u64 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("pages {first}..{end} are outside the image of {pages} pages")]
    RangeOutOfImage {
        first: PageIndex,
        end: u64,
        pages: u64,
    },
    #[error("a proof covers 1 to {MAX_PROOF_PAGES} pages, not {found}")]
    BadCount { found: u64 },
    #[error("image is {found} bytes but the tree was built over {expected}")]
    ImageMismatch { expected: u64, found: u64 },
    #[error("proof holds {found} sibling digests: the tree shape needs {expected}")]
    SiblingCount { expected: usize, found: usize },
    #[error(
        "pages {first}..{end} do not hash to the root: proof claims {claimed}, pages give {computed}"
    )]
    RootMismatch {
        first: PageIndex,
        end: u64,
        claimed: Digest,
        computed: Digest,
    },
}

impl Classify for ProofError {
    fn class(&self) -> ErrorClass {
        match self {
            ProofError::Wire(e) => e.class(),
            ProofError::Tree(e) => e.class(),
            // A sibling count the tree shape cannot have is a malformed proof, not a wrong one.
            ProofError::RangeOutOfImage { .. }
            | ProofError::BadCount { .. }
            | ProofError::ImageMismatch { .. }
            | ProofError::SiblingCount { .. } => ErrorClass::Input,
            ProofError::RootMismatch { .. } => ErrorClass::Verification,
        }
    }
}

/// A proof that pages `first .. first + count` of an image have the bytes it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageProof {
    pub params: TreeParams,
    pub image_len: u64,
    pub first: PageIndex,
    pub count: u64,
    pub root: Digest,
    /// The pages' bytes; the image's last page may be short.
    pub pages: Vec<u8>,
    /// Sibling digests, flat, in the order described in the module docs.
    pub siblings: Vec<u8>,
}

/// Half-open node range touched at one level, and the group-aligned range around it.
struct Span {
    lo: u64,
    hi: u64,
    group_lo: u64,
    group_hi: u64,
}

fn span(lo: u64, hi: u64, arity: u64, len: u64) -> Span {
    Span {
        lo,
        hi,
        group_lo: lo - lo % arity,
        group_hi: (hi.div_ceil(arity) * arity).min(len),
    }
}

fn check_range(first: PageIndex, count: u64, pages: u64) -> Result<u64, ProofError> {
    if count == 0 || count > MAX_PROOF_PAGES {
        return Err(ProofError::BadCount { found: count });
    }
    let end = first.0.saturating_add(count);
    if end > pages {
        return Err(ProofError::RangeOutOfImage { first, end, pages });
    }
    Ok(end)
}

/// Byte range of pages `first..end` in an image of `len` bytes.
fn byte_range(first: u64, end: u64, len: u64) -> (usize, usize) {
    (
        // Saturating: an image near 2^64 bytes ends inside the last page, below the product.
        usize_of(first.saturating_mul(PAGE_SIZE as u64).min(len)),
        usize_of(end.saturating_mul(PAGE_SIZE as u64).min(len)),
    )
}

pub(super) fn prove(
    tree: &ImageTree,
    image: &[u8],
    first: PageIndex,
    count: u64,
) -> Result<PageProof, ProofError> {
    if image.len() as u64 != tree.len {
        return Err(ProofError::ImageMismatch {
            expected: tree.len,
            found: image.len() as u64,
        });
    }
    let end = check_range(first, count, tree.pages())?;
    let params = &tree.params;
    let dlen = params.alg.digest_len();
    let arity = params.arity() as u64;
    let lens = params.level_lens(tree.pages());
    let mut siblings = Vec::new();
    let (mut lo, mut hi) = (first.0, end);
    for (k, &len) in lens.iter().enumerate().take(lens.len() - 1) {
        let s = span(lo, hi, arity, len);
        let level = tree.level(k);
        let at = |i: u64| usize_of(i) * dlen;
        siblings.extend_from_slice(&level[at(s.group_lo)..at(s.lo)]);
        siblings.extend_from_slice(&level[at(s.hi)..at(s.group_hi)]);
        lo = s.group_lo / arity;
        hi = s.group_hi.div_ceil(arity);
    }
    let (b0, b1) = byte_range(first.0, end, tree.len);
    Ok(PageProof {
        params: params.clone(),
        image_len: tree.len,
        first,
        count,
        root: tree.root,
        pages: image[b0..b1].to_vec(),
        siblings,
    })
}

impl PageProof {
    /// Recomputes the root from the pages and siblings; `Ok` means it equals `self.root`.
    pub fn verify(&self) -> Result<(), ProofError> {
        let computed = self.computed_root()?;
        if computed != self.root {
            return Err(ProofError::RootMismatch {
                first: self.first,
                end: self.first.0 + self.count,
                claimed: self.root,
                computed,
            });
        }
        Ok(())
    }

    fn computed_root(&self) -> Result<Digest, ProofError> {
        let params = &self.params;
        let pages = page_count(self.image_len);
        let end = check_range(self.first, self.count, pages)?;
        let (b0, b1) = byte_range(self.first.0, end, self.image_len);
        if self.pages.len() != b1 - b0 {
            return Err(ProofError::ImageMismatch {
                expected: (b1 - b0) as u64,
                found: self.pages.len() as u64,
            });
        }
        let dlen = params.alg.digest_len();
        let nsib = self.siblings.len() / dlen;
        if pages == 1 {
            if !self.siblings.is_empty() {
                return Err(ProofError::SiblingCount {
                    expected: 0,
                    found: nsib,
                });
            }
            return Ok(params.small_root(&self.pages)?);
        }
        let mut current: Vec<u8> = Vec::with_capacity(usize_of(self.count) * dlen);
        for (i, page) in self.pages.chunks(PAGE_SIZE).enumerate() {
            let mut d = [0u8; crate::alg::MAX_DIGEST_LEN];
            params.leaf(self.first.0 + i as u64, page, &mut d[..dlen]);
            current.extend_from_slice(&d[..dlen]);
        }
        let arity = params.arity() as u64;
        let lens = params.level_lens(pages);
        let expected = expected_siblings(params, &lens, self.first.0, end);
        if self.siblings.len() != expected * dlen {
            return Err(ProofError::SiblingCount {
                expected,
                found: nsib,
            });
        }
        let mut sib = self.siblings.as_slice();
        let (mut lo, mut hi) = (self.first.0, end);
        for (k, &len) in lens.iter().enumerate().take(lens.len() - 1) {
            let s = span(lo, hi, arity, len);
            let (left, rest) = sib.split_at(usize_of(s.lo - s.group_lo) * dlen);
            let (right, rest) = rest.split_at(usize_of(s.group_hi - s.hi) * dlen);
            sib = rest;
            let mut nodes = Vec::with_capacity(left.len() + current.len() + right.len());
            nodes.extend_from_slice(left);
            nodes.extend_from_slice(&current);
            nodes.extend_from_slice(right);
            let is_root = k + 2 == lens.len();
            current = nodes
                .chunks(usize_of(arity) * dlen)
                .flat_map(|g| {
                    let mut d = [0u8; crate::alg::MAX_DIGEST_LEN];
                    params.combine(g, is_root, &mut d[..dlen]);
                    d[..dlen].to_vec()
                })
                .collect();
            lo = s.group_lo / arity;
            hi = s.group_hi.div_ceil(arity);
        }
        Ok(Digest::new(params.alg, &current).unwrap_or(self.root))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(self.params.alg.id())
            .bytes(self.params.salt())
            .u64(self.image_len)
            .u64(self.first.0)
            .u64(self.count)
            .raw(self.root.as_bytes())
            .raw(&self.pages)
            .u32(
                u32::try_from(self.siblings.len() / self.params.alg.digest_len())
                    .unwrap_or(u32::MAX),
            )
            .raw(&self.siblings);
        w.envelope(Kind::PageProof)
    }

    pub fn decode(bytes: &[u8]) -> Result<PageProof, ProofError> {
        let mut r = crate::wire::open(bytes, Kind::PageProof)?;
        let alg = read_alg(&mut r)?;
        let salt = r.bytes("salt", MAX_SALT_LEN)?;
        let params = TreeParams::new(alg, salt)?;
        let image_len = r.u64("image length")?;
        let first = PageIndex(r.u64("first page")?);
        let count = r.u64("page count")?;
        let end = check_range(first, count, page_count(image_len))?;
        let root_at = r.offset();
        let root = Digest::new(alg, r.take("root", alg.digest_len())?)
            .ok_or_else(|| r.bad("root", root_at, "expected a digest", "short"))?;
        let (b0, b1) = byte_range(first.0, end, image_len);
        let pages = r.take("pages", b1 - b0)?.to_vec();
        let n = r.len32("sibling count", 64 * 1024)?;
        let siblings = r.take("siblings", n * alg.digest_len())?.to_vec();
        r.finish(Kind::PageProof)?;
        Ok(PageProof {
            params,
            image_len,
            first,
            count,
            root,
            pages,
            siblings,
        })
    }
}

/// Siblings a proof of pages `lo..hi` needs, from the tree shape alone.
fn expected_siblings(params: &TreeParams, lens: &[u64], mut lo: u64, mut hi: u64) -> usize {
    let arity = params.arity() as u64;
    let mut n = 0;
    for &len in lens.iter().take(lens.len() - 1) {
        let s = span(lo, hi, arity, len);
        n += usize_of((s.lo - s.group_lo) + (s.group_hi - s.hi));
        lo = s.group_lo / arity;
        hi = s.group_hi.div_ceil(arity);
    }
    n
}

pub fn read_alg(r: &mut Reader<'_>) -> Result<HashAlg, WireError> {
    let at = r.offset();
    let id = r.u8("hash algorithm")?;
    HashAlg::from_id(id).ok_or_else(|| {
        r.bad(
            "hash algorithm",
            at,
            "expected 1 (blake3), 2 (sha256) or 3 (sha384)",
            id,
        )
    })
}
