//! Manifests (kind 4), as a store or a bundle holds them: decode, re-encode to the same bytes,
//! then the digests verification derives from them (delta digest, state root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::chain::{Manifest, delta_digest, state_root};
use vmattest_core::wire::Kind;
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        // An older version (no anchor byte) is written back at the current one.
        if data.get(10..12) == Some(&Kind::Manifest.version().to_be_bytes()[..]) {
            same_bytes("manifest", data, &m.encode());
        }
        let _ = m.data_pages();
        let _ = delta_digest(m.meta.params.alg(), &m.entries);
        let _ = state_root(&m.meta, &m.components);
    }
});
