//! The core's tree roots against golden vectors that `b3sum` and `veritysetup` printed once
//! (tests/vectors/README.md). The oracle tests that run those tools live with the CLI; these run
//! anywhere, without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use vmattest_core::alg::{HashAlg, PAGE_SIZE};
use vmattest_core::tree::{ImageTree, NoProgress, TreeParams};
use vmattest_testkit::images::vm_like;

struct Vector {
    len: usize,
    seed: u64,
    salt: Vec<u8>,
    root: String,
}

fn vectors(text: &str) -> Vec<Vector> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "vector line {l:?}");
            Vector {
                len: f[0].parse().unwrap(),
                seed: f[1].parse().unwrap(),
                salt: if f[2] == "-" {
                    Vec::new()
                } else {
                    hex::decode(f[2]).unwrap()
                },
                root: f[3].to_owned(),
            }
        })
        .collect()
}

/// Images above this size (the 128² + 1 page vectors) take most of a minute in a debug build, so
/// they have their own test, ignored by default.
const LARGE: usize = 16 << 20;

fn check(alg: HashAlg, text: &str, large: bool, min: usize) {
    let vectors: Vec<Vector> = vectors(text)
        .into_iter()
        .filter(|v| (v.len > LARGE + PAGE_SIZE) == large)
        .collect();
    assert!(vectors.len() >= min, "{alg}: {} vectors", vectors.len());
    for v in vectors {
        let image = vm_like(v.len, v.seed);
        let params = TreeParams::new(alg, &v.salt).unwrap();
        let tree = ImageTree::build(&params, &image, &NoProgress).unwrap();
        assert_eq!(
            tree.root().to_string(),
            v.root,
            "{alg}, {} bytes, seed {}, salt {}",
            v.len,
            v.seed,
            hex::encode(&v.salt)
        );
    }
}

const BLAKE3: &str = include_str!("vectors/blake3.txt");
const SHA256: &str = include_str!("vectors/sha256.txt");
const SHA384: &str = include_str!("vectors/sha384.txt");

#[test]
fn blake3_roots_equal_b3sum_vectors() {
    check(HashAlg::Blake3, BLAKE3, false, 15);
}

#[test]
fn sha256_roots_equal_veritysetup_vectors() {
    check(HashAlg::Sha256, SHA256, false, 20);
}

#[test]
fn sha384_roots_equal_veritysetup_vectors() {
    check(HashAlg::Sha384, SHA384, false, 20);
}

#[test]
#[ignore = "64 MiB images: run with --include-ignored, best with --release"]
fn large_roots_equal_their_vectors() {
    check(HashAlg::Blake3, BLAKE3, true, 1);
    check(HashAlg::Sha256, SHA256, true, 2);
    check(HashAlg::Sha384, SHA384, true, 2);
}
