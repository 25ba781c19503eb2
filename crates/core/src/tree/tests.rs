#![allow(clippy::cast_possible_truncation)]

use proptest::prelude::*;

use super::*;
use crate::alg::{Digest, MAX_DIGEST_LEN};

/// Straightforward reference: recursive BLAKE3 over whole subtrees through the public API.
fn blake3_reference(data: &[u8]) -> Vec<u8> {
    blake3::small_root(data).to_vec()
}

/// Reference dm-verity: level by level with plain hashing, no shared code paths.
fn verity_reference(alg: HashAlg, salt: &[u8], data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    let h = |b: &[u8]| -> Vec<u8> {
        match alg {
            HashAlg::Sha384 => sha2::Sha384::new()
                .chain_update(salt)
                .chain_update(b)
                .finalize()
                .to_vec(),
            _ => sha2::Sha256::new()
                .chain_update(salt)
                .chain_update(b)
                .finalize()
                .to_vec(),
        }
    };
    let mut level: Vec<Vec<u8>> = data
        .chunks(PAGE_SIZE)
        .map(|c| {
            let mut b = c.to_vec();
            b.resize(PAGE_SIZE, 0);
            h(&b)
        })
        .collect();
    let slot = alg.digest_len().next_power_of_two();
    while level.len() > 1 {
        level = level
            .chunks(PAGE_SIZE / slot)
            .map(|g| {
                let mut b = vec![0u8; PAGE_SIZE];
                for (i, d) in g.iter().enumerate() {
                    b[i * slot..i * slot + d.len()].copy_from_slice(d);
                }
                h(&b)
            })
            .collect();
    }
    level.pop().unwrap_or_default()
}

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            if (i / PAGE_SIZE) % 3 == 1 {
                return 0; // zero pages, as in real guests
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn build(alg: HashAlg, salt: &[u8], data: &[u8]) -> ImageTree {
    ImageTree::build(&TreeParams::new(alg, salt).unwrap(), data, &NoProgress).unwrap()
}

#[test]
fn roots_match_references_at_edges() {
    for len in [
        1,
        100,
        4095,
        4096,
        4097,
        8192,
        8193,
        12288,
        5 * 4096 + 7,
        129 * 4096,
        300 * 4096 + 1,
    ] {
        let data = image(len, len as u64);
        let t = build(HashAlg::Blake3, &[], &data);
        assert_eq!(
            t.root().as_bytes(),
            blake3_reference(&data),
            "blake3 len {len}"
        );
        for alg in [HashAlg::Sha256, HashAlg::Sha384] {
            for salt in [&[][..], &[0xab, 0xcd][..]] {
                let t = build(alg, salt, &data);
                assert_eq!(
                    t.root().as_bytes(),
                    verity_reference(alg, salt, &data),
                    "{alg} len {len}"
                );
            }
        }
    }
}

#[test]
fn empty_image_rule() {
    let t = build(HashAlg::Blake3, &[], &[]);
    assert_eq!(t.root().as_bytes(), blake3_reference(&[]));
    assert_eq!(t.pages(), 0);
    let err = ImageTree::build(
        &TreeParams::new(HashAlg::Sha256, &[]).unwrap(),
        &[],
        &NoProgress,
    );
    assert_eq!(
        err,
        Err(TreeError::EmptyImage {
            alg: HashAlg::Sha256
        })
    );
}

#[test]
fn salt_rules() {
    assert_eq!(
        TreeParams::new(HashAlg::Blake3, &[1]),
        Err(TreeError::SaltNotAllowed {
            alg: HashAlg::Blake3
        })
    );
    assert_eq!(
        TreeParams::new(HashAlg::Sha256, &[0; 257]),
        Err(TreeError::SaltTooLong { found: 257 })
    );
}

#[test]
fn update_pages_equals_rebuild() {
    for alg in HashAlg::ALL {
        for pages in [1usize, 2, 3, 130, 300] {
            let mut data = image(pages * PAGE_SIZE - 5, 7);
            let mut t = build(alg, &[], &data);
            let changed = [0u64, pages as u64 / 2, pages as u64 - 1];
            for &p in &changed {
                data[p as usize * PAGE_SIZE] ^= 0x5a;
            }
            let idx: Vec<PageIndex> = changed.iter().map(|&p| PageIndex(p)).collect();
            let root = t.update_pages(&data, &idx).unwrap();
            let fresh = build(alg, &[], &data);
            assert_eq!(root, fresh.root(), "{alg} {pages}");
            assert_eq!(t, fresh);
        }
    }
}

#[test]
fn update_pages_rejects_bad_input() {
    let data = image(3 * PAGE_SIZE, 1);
    let mut t = build(HashAlg::Blake3, &[], &data);
    assert_eq!(
        t.update_pages(&data[..100], &[]),
        Err(TreeError::LengthChanged {
            expected: 3 * 4096,
            found: 100
        })
    );
    assert_eq!(
        t.update_pages(&data, &[PageIndex(3)]),
        Err(TreeError::PageOutOfRange {
            page: PageIndex(3),
            pages: 3
        })
    );
}

#[test]
fn proof_round_trip_and_range() {
    for alg in HashAlg::ALL {
        let data = image(260 * PAGE_SIZE + 9, 3);
        let t = build_any(alg, &data);
        for (first, count) in [(0u64, 1u64), (1, 1), (127, 3), (255, 6), (260, 1), (0, 261)] {
            let p = t.prove(&data, PageIndex(first), count).unwrap();
            p.verify().unwrap();
            let decoded = PageProof::decode(&p.encode()).unwrap();
            assert_eq!(decoded, p);
        }
        assert!(matches!(
            t.prove(&data, PageIndex(260), 2),
            Err(ProofError::RangeOutOfImage { .. })
        ));
        assert!(matches!(
            t.prove(&data, PageIndex(0), 0),
            Err(ProofError::BadCount { found: 0 })
        ));
    }
}

// Salt "9" is not allowed for BLAKE3, so that case uses an unsalted tree.
fn build_any(alg: HashAlg, data: &[u8]) -> ImageTree {
    build(alg, if alg.takes_salt() { &[9] } else { &[] }, data)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_sampled_page_proof_verifies_and_flips_fail(
        pages in 1usize..300,
        tail in 0usize..PAGE_SIZE,
        seed in any::<u64>(),
        alg_i in 0usize..3,
        pick in any::<u64>(),
        bit in any::<u64>(),
    ) {
        let alg = HashAlg::ALL[alg_i];
        let len = (pages - 1) * PAGE_SIZE + tail.max(1);
        let data = image(len, seed);
        let t = build_any(alg, &data);
        let page = pick % t.pages();
        let proof = t.prove(&data, PageIndex(page), 1).unwrap();
        proof.verify().unwrap();

        // Any flipped bit in the encoded proof is detected: by decoding or by verification.
        let enc = proof.encode();
        let mut bad = enc.clone();
        let at = (bit as usize / 8) % bad.len();
        bad[at] ^= 1 << (bit % 8);
        if let Ok(p) = PageProof::decode(&bad).and_then(|p| p.verify().map(|()| p)) {
            // A proof binds its pages and offsets, not the image length: the siblings are
            // opaque, so a length that gives the proven pages the same path verifies (and a
            // dm-verity root ignores the length inside the zero-padded last page). Only such a
            // change may pass; verifiers compare the length with the signed record's.
            let same_pages =
                (p.first, p.count, &p.pages) == (proof.first, proof.count, &proof.pages);
            prop_assert!(
                p.image_len != proof.image_len && same_pages,
                "flip at byte {} of {} went unnoticed", at, enc.len()
            );
        }

        // A flipped bit in the image changes the root.
        let mut img = data.clone();
        let i = (bit as usize / 8) % img.len();
        img[i] ^= 1 << (bit % 8);
        prop_assert_ne!(build_any(alg, &img).root(), t.root());
    }
}

#[test]
fn truncated_and_foreign_proofs_are_refused() {
    let data = image(5 * PAGE_SIZE, 2);
    let enc = build(HashAlg::Sha256, &[], &data)
        .prove(&data, PageIndex(2), 1)
        .unwrap()
        .encode();
    for cut in [0, 7, 15, 16, 40, enc.len() - 1] {
        assert!(PageProof::decode(&enc[..cut]).is_err(), "cut {cut}");
    }
    let mut foreign = enc.clone();
    foreign[..8].copy_from_slice(b"NOTVMATT");
    assert!(matches!(
        PageProof::decode(&foreign),
        Err(ProofError::Wire(WireError::BadMagic { .. }))
    ));
    let mut version = enc.clone();
    version[11] = 9;
    assert!(matches!(
        PageProof::decode(&version),
        Err(ProofError::Wire(WireError::BadVersion { .. }))
    ));
    let mut longer = enc.clone();
    longer.push(0);
    assert!(matches!(
        PageProof::decode(&longer),
        Err(ProofError::Wire(WireError::Trailing { .. }))
    ));
    let _ = MAX_DIGEST_LEN;
}

use crate::wire::WireError;

#[test]
fn set_page_digests_equals_update_pages() {
    for alg in HashAlg::ALL {
        for pages in [1usize, 2, 5, 300] {
            let mut data = image(pages * PAGE_SIZE, 11);
            let old = build(alg, &[], &data);
            data[(pages - 1) * PAGE_SIZE + 3] ^= 0xff;
            let fresh = build(alg, &[], &data);
            let last = PageIndex(pages as u64 - 1);
            let mut t = old.clone();
            t.set_page_digests(&[(last, fresh.page_digest(last).unwrap())], &data)
                .unwrap();
            assert_eq!(t, fresh, "{alg} {pages}");
        }
    }
}

#[test]
fn sparse_digests_equal_a_full_build() {
    for alg in HashAlg::ALL {
        for len in [
            PAGE_SIZE,
            3 * PAGE_SIZE + 9,
            200 * PAGE_SIZE,
            130 * PAGE_SIZE - 1,
        ] {
            let mut data = vec![0u8; len];
            let listed_pages = [0usize, 1, 64, 65, 127];
            for &p in listed_pages.iter().filter(|&&p| p * PAGE_SIZE < len) {
                data[p * PAGE_SIZE] = 7;
            }
            let full = build(alg, &[], &data);
            let listed: Vec<(PageIndex, Digest)> = listed_pages
                .iter()
                .filter(|&&p| p * PAGE_SIZE < len)
                .map(|&p| {
                    (
                        PageIndex(p as u64),
                        full.page_digest(PageIndex(p as u64)).unwrap(),
                    )
                })
                .collect();
            let params = TreeParams::new(alg, &[]).unwrap();
            let sparse =
                ImageTree::from_sparse_page_digests(&params, len as u64, &listed, &data).unwrap();
            assert_eq!(sparse, full, "{alg} {len}");
            let mut hashed = vec![0u8; full.page_digests().len()];
            params.hash_pages(PageIndex(0), &data, &mut hashed);
            assert_eq!(hashed, full.page_digests());
        }
    }
}

#[test]
fn holes_give_the_same_tree_without_being_read() {
    for alg in [HashAlg::Blake3, HashAlg::Sha256, HashAlg::Sha384] {
        let salt: &[u8] = if alg == HashAlg::Blake3 { b"" } else { b"salt" };
        let params = TreeParams::new(alg, salt).unwrap();
        // 300 pages plus a short tail; zero runs at the start, the middle and the end.
        // Bytes inside the holes are deliberately not zero: the tree must not read them.
        let unread = image(300 * PAGE_SIZE + 100, 3);
        let mut zeroed = unread.clone();
        for r in [0..70usize, 128..260, 290..301] {
            let end = (r.end * PAGE_SIZE).min(zeroed.len());
            zeroed[r.start * PAGE_SIZE..end].fill(0);
        }
        let full = ImageTree::build(&params, &zeroed, &NoProgress).unwrap();
        let holes = [0..70u64, 128..260, 290..301];
        let sparse = ImageTree::build_with_holes(&params, &unread, &holes, &NoProgress).unwrap();
        assert_eq!(sparse.root(), full.root(), "{alg:?}");
        assert_eq!(sparse.page_digests(), full.page_digests(), "{alg:?}");
    }
}
