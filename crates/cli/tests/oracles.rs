//! Golden vectors against tools nobody here wrote: `b3sum` and `veritysetup`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;

const SIZES: [usize; 9] = [1, 2, 3, 127, 128, 129, 16383, 16384, 16385];

fn measure(path: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["measure", "--json", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    vmattest(&args).ok().json()
}

#[test]
fn blake3_roots_equal_b3sum() {
    let dir = tempfile::tempdir().unwrap();
    for pages in SIZES {
        let img = write(dir.path(), "img", &vm_like(pages * PAGE, pages as u64));
        let j = measure(&img, &["--alg", "blake3"]);
        assert_eq!(j["root"], b3sum(&img), "{pages} pages");
        assert_eq!(j["pages"], pages as u64);
        assert_eq!(j["alg"], "blake3");
        assert_eq!(j["path"], img.to_str().unwrap());
    }
    // Not a multiple of 4 KiB, and empty: b3sum's answer is still the root.
    for len in [0usize, 1, 4095, 4097, 3 * PAGE + 100] {
        let img = write(dir.path(), "odd", &vm_like(len, 9));
        assert_eq!(measure(&img, &[])["root"], b3sum(&img), "{len} bytes");
    }
}

#[test]
fn verity_roots_equal_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    let hash_dev = dir.path().join("hash");
    for pages in SIZES {
        let img = write(
            dir.path(),
            "img",
            &vm_like(pages * PAGE, 100 + pages as u64),
        );
        for alg in ["sha256", "sha384"] {
            for salt in ["-", "00112233445566778899aabbccddeeff"] {
                let expect = veritysetup_root(&img, &hash_dev, alg, salt);
                let j = measure(&img, &["--alg", alg, "--salt", salt]);
                assert_eq!(j["root"], expect, "{alg} salt {salt} {pages} pages");
            }
        }
    }
}

#[test]
fn our_hash_device_passes_veritysetup_verify() {
    let dir = tempfile::tempdir().unwrap();
    for pages in [1usize, 2, 129, 16385] {
        let img = write(dir.path(), "img", &vm_like(pages * PAGE, pages as u64));
        for alg in ["sha256", "sha384"] {
            let dev = dir.path().join(format!("{alg}.hash"));
            let _ = std::fs::remove_file(&dev);
            let j = vmattest([
                "measure",
                "--json",
                "--alg",
                alg,
                "--salt",
                "abcd",
                "--hash-device",
                dev.to_str().unwrap(),
                img.to_str().unwrap(),
            ])
            .ok()
            .json();
            let root = j["root"].as_str().unwrap();
            oracle(
                "veritysetup",
                &["verify", img.to_str().unwrap(), dev.to_str().unwrap(), root],
            );
            // The hash blocks are byte-identical to veritysetup's (only the UUID differs).
            let theirs = dir.path().join("theirs.hash");
            veritysetup_root(&img, &theirs, alg, "abcd");
            let (a, b) = (
                std::fs::read(&dev).unwrap(),
                std::fs::read(&theirs).unwrap(),
            );
            assert_eq!(a.len(), b.len(), "{alg} {pages}");
            assert_eq!(a[..16], b[..16]);
            assert_eq!(a[32..], b[32..], "{alg} {pages}");
        }
    }
}
