//! BLAKE3 page hashing: each 4 KiB page is a BLAKE3 subtree at its own offset, so the
//! image root is exactly `b3sum` of the image.
//!
//! The public hazmat API hashes one page per call, which fills only 4 of AVX-512's 16 lanes.
//! Full pages are therefore hashed in batches through the crate's `hash_many` kernel (the
//! same entry point its own hasher uses), 16 chunks and then 8 and 4 parents per call. The
//! crate is pinned exactly for that reason, and every result is checked against the hazmat
//! path and `b3sum` in the tests.

use blake3::hazmat::{HasherExt as _, Mode, merge_subtrees_non_root, merge_subtrees_root};
use blake3::platform::Platform;

use crate::alg::PAGE_SIZE;

const CHUNK_LEN: usize = 1024;
const CHUNKS_PER_PAGE: usize = PAGE_SIZE / CHUNK_LEN;
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
/// BLAKE3's IV (the SHA-256 IV), the key words of the unkeyed hash mode.
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

/// Chaining value of one page (full or partial) through the hazmat API.
pub(crate) fn page_cv(page: PageAt<'_>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(page.index * PAGE_SIZE as u64);
    h.update(page.data);
    h.finalize_non_root()
}

/// A page's bytes and its index in the image.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageAt<'a> {
    pub index: u64,
    pub data: &'a [u8],
}

/// Chaining values of consecutive full pages starting at page `first`, written to `out`
/// (32 bytes per page).
pub(crate) fn full_pages_cv(first: u64, pages: &[u8], out: &mut [u8]) {
    debug_assert_eq!(pages.len() % PAGE_SIZE, 0);
    debug_assert_eq!(out.len(), pages.len() / PAGE_SIZE * 32);
    let platform = Platform::detect();
    let (chunks, _) = pages.as_chunks::<CHUNK_LEN>();
    let chunk_refs: Vec<&[u8; CHUNK_LEN]> = chunks.iter().collect();
    let mut level = vec![0u8; chunk_refs.len() * 32];
    platform.hash_many(
        &chunk_refs,
        &IV,
        first * CHUNKS_PER_PAGE as u64,
        blake3::IncrementCounter::Yes,
        0,
        CHUNK_START,
        CHUNK_END,
        &mut level,
    );
    // Two parent levels turn four chunk CVs into one page CV.
    let mut half = vec![0u8; level.len() / 2];
    parents_into(platform, &level, &mut half);
    parents_into(platform, &half, out);
}

/// Non-root parents of adjacent CV pairs; `cvs` holds an even number of CVs.
pub(crate) fn parents_into(platform: Platform, cvs: &[u8], out: &mut [u8]) {
    let (pairs, rest) = cvs.as_chunks::<64>();
    debug_assert!(rest.is_empty());
    let refs: Vec<&[u8; 64]> = pairs.iter().collect();
    platform.hash_many(
        &refs,
        &IV,
        0,
        blake3::IncrementCounter::No,
        PARENT,
        0,
        0,
        out,
    );
}

/// Keyed BLAKE3 hashes (`blake3::keyed_hash`) of consecutive 64-byte messages, 32 bytes each to
/// `out`: one compression per message, 16 messages per call on AVX-512.
pub(crate) fn keyed_blocks(key: &[u8; 32], messages: &[u8], out: &mut [u8]) {
    const KEYED_HASH: u8 = 1 << 4;
    const ROOT: u8 = 1 << 3;
    let (blocks, rest) = messages.as_chunks::<64>();
    debug_assert!(rest.is_empty());
    debug_assert_eq!(out.len(), blocks.len() * 32);
    let words: [u32; 8] = std::array::from_fn(|i| {
        u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]])
    });
    let refs: Vec<&[u8; 64]> = blocks.iter().collect();
    Platform::detect().hash_many(
        &refs,
        &words,
        0,
        blake3::IncrementCounter::No,
        KEYED_HASH | ROOT,
        CHUNK_START,
        CHUNK_END,
        out,
    );
}

/// Parent of one pair; `root` selects the root flag, which yields the final hash.
pub(crate) fn merge(left: &[u8], right: &[u8], root: bool) -> [u8; 32] {
    let l = cv(left);
    let r = cv(right);
    if root {
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

pub(crate) fn platform() -> Platform {
    Platform::detect()
}

fn cv(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[..32]);
    out
}

/// The root of an image of at most one page is the plain hash of its bytes.
pub(crate) fn small_root(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn keyed_blocks_match_keyed_hash() {
        let key = *blake3::hash(b"test key").as_bytes();
        for n in [1usize, 15, 16, 17, 40] {
            let msgs: Vec<u8> = (0..n * 64).map(|i| (i * 31 % 251) as u8).collect();
            let mut out = vec![0u8; n * 32];
            keyed_blocks(&key, &msgs, &mut out);
            for (m, o) in msgs.chunks(64).zip(out.chunks(32)) {
                assert_eq!(o, blake3::keyed_hash(&key, m).as_bytes());
            }
        }
    }

    #[test]
    fn wide_matches_hazmat() {
        let data: Vec<u8> = (0..PAGE_SIZE * 37)
            .map(|i| ((i * 7 + i / 4093) % 256) as u8)
            .collect();
        for first in [0u64, 1, 5, 1 << 20] {
            let mut wide = vec![0u8; 37 * 32];
            full_pages_cv(first, &data, &mut wide);
            for (i, page) in data.chunks(PAGE_SIZE).enumerate() {
                let expect = page_cv(PageAt {
                    index: first + i as u64,
                    data: page,
                });
                assert_eq!(
                    &wide[i * 32..i * 32 + 32],
                    &expect,
                    "page {i} first {first}"
                );
            }
        }
    }
}
