//! Which pages of a region an evidence covers, and the region digest over them.
//!
//! Sampled pages are drawn from a PRF keyed by the server's nonce, so the server can recompute
//! the choice while the host cannot know it before the challenge.

use super::policy::Region;
use crate::alg::{Digest, HashAlg, PageIndex};

const SAMPLE_DOMAIN: &[u8] = b"vmattest page-sample v1\0";
const REGION_DOMAIN: &[u8] = b"vmattest region-digest v1\0";

/// Page indices (relative to the region's start) in ascending order.
pub fn sample_pages(nonce: &[u8], region: &Region) -> Vec<PageIndex> {
    if region.sample == 0 || u64::from(region.sample) >= region.pages {
        return (0..region.pages).map(PageIndex).collect();
    }
    let want = region.sample as usize;
    let mut picked: Vec<u64> = Vec::with_capacity(want);
    let nonce_len = (nonce.len() as u64).to_be_bytes();
    let mut counter = 0u64;
    while picked.len() < want {
        let d = HashAlg::Sha256.hash(&[
            SAMPLE_DOMAIN,
            &nonce_len,
            nonce,
            region.name.as_bytes(),
            &[0],
            &counter.to_be_bytes(),
        ]);
        counter += 1;
        let mut word = [0u8; 8];
        word.copy_from_slice(&d.as_bytes()[..8]);
        // Modulo bias is below 2^-40 for any region size allowed (at most 2^18 pages).
        let page = u64::from_be_bytes(word) % region.pages;
        if !picked.contains(&page) {
            picked.push(page);
        }
    }
    picked.sort_unstable();
    picked.into_iter().map(PageIndex).collect()
}

/// The digest of one 4 KiB page.
pub fn page_digest(alg: HashAlg, page: &[u8]) -> Digest {
    alg.hash(&[page])
}

/// Digest over `(page index, page digest)` entries, in the order given (ascending).
pub fn region_digest(alg: HashAlg, name: &str, pages: &[(PageIndex, Digest)]) -> Digest {
    let mut buf = Vec::with_capacity(REGION_DOMAIN.len() + name.len() + 16 + pages.len() * 56);
    buf.extend_from_slice(REGION_DOMAIN);
    buf.extend_from_slice(&(name.len() as u64).to_be_bytes());
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(&(pages.len() as u64).to_be_bytes());
    for (i, d) in pages {
        buf.extend_from_slice(&i.0.to_be_bytes());
        buf.extend_from_slice(d.as_bytes());
    }
    alg.hash(&[&buf])
}
