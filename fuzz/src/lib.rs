//! Helpers shared by the fuzz targets (docs/FUZZING.md).
//!
//! A target panics only when a property breaks: a decoder that panics, or an accepted input
//! whose re-encoding differs from it (a second encoding of one value is what a signature
//! confusion needs).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vmattest_sign::PublicKey;

/// Fails the run when `again`, the re-encoding of the accepted `input`, differs from it.
pub fn same_bytes(what: &str, input: &[u8], again: &[u8]) {
    if input != again {
        let at = input
            .iter()
            .zip(again)
            .position(|(a, b)| a != b)
            .unwrap_or(input.len().min(again.len()));
        panic!(
            "{what}: accepted input of {} bytes re-encodes to {} bytes, first difference at byte {at}",
            input.len(),
            again.len()
        );
    }
}

/// The first byte picks a case; the rest is the input. Empty input gives case 0 and nothing.
pub fn select(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (0, data),
    }
}

/// Splits at the first `sep`: the bytes before it and those after it (empty if none).
pub fn split2(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The public keys the seed corpora were signed with (fuzz/seeds/keys, written by
/// scripts/fuzz-seeds.sh): signatures in the seeds verify under them, so mutations of a valid
/// signature reach every step of verification.
pub fn seed_keys() -> &'static [PublicKey] {
    static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            include_str!("../seeds/keys/ed25519.pub"),
            include_str!("../seeds/keys/p384.pub"),
            include_str!("../seeds/keys/ml-dsa-65.pub"),
            include_str!("../seeds/keys/hybrid.pub"),
        ]
        .iter()
        .filter_map(|pem| PublicKey::from_pem(pem).ok())
        .collect()
    })
}

/// Directory of the small files that the libvirt target lets domain XML name.
pub const FIXTURE_DIR: &str = "/tmp/vmattest-fuzz";

/// The fixture files (kernel, initrd, firmware, raw disks), created once per process. Domain
/// XML may name only these among existing paths; see `only_fixture_paths`.
pub fn fixtures() -> &'static [PathBuf] {
    static FILES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = Path::new(FIXTURE_DIR);
        let _ = std::fs::create_dir_all(dir);
        let files: [(&str, usize); 8] = [
            ("vmlinuz", 5000),
            ("initrd.img", 300),
            ("OVMF_CODE.fd", 4096),
            ("OVMF_VARS.fd", 4096),
            ("db-2_VARS.fd", 4096),
            ("root.img", 8192),
            ("data.img", 4096 * 3 + 17),
            ("system.img", 4096),
        ];
        files
            .iter()
            .map(|(name, len)| {
                let path = dir.join(name);
                let want: Vec<u8> = (0..*len).map(|i| (i * 7 % 251) as u8).collect();
                if std::fs::read(&path).ok().as_deref() != Some(want.as_slice()) {
                    let _ = std::fs::write(&path, &want);
                }
                path
            })
            .collect()
    })
}

/// Whether every text and attribute value of `xml` that is an absolute path either names a
/// fixture file or names nothing that exists. Domain XML makes the measurement read the files
/// it names; a fuzzer must not make it hash a block device or a large system file.
pub fn only_fixture_paths(xml: &str) -> bool {
    let allowed = fixtures();
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: 200_000,
        ..roxmltree::ParsingOptions::default()
    };
    let Ok(doc) = roxmltree::Document::parse_with_options(xml, options) else {
        // The measurement parses with the same options and fails before reading a file.
        return true;
    };
    let ok = |value: &str| {
        let v = value.trim();
        if v.contains("qcow2") {
            // A qcow2 disk runs qemu-img, a process per input.
            return false;
        }
        !v.starts_with('/') || allowed.iter().any(|p| p.as_os_str() == v) || !Path::new(v).exists()
    };
    doc.descendants()
        .all(|n| n.text().is_none_or(ok) && n.attributes().all(|a| ok(a.value())))
}
