//! Page proofs (kind 3), as `verify-proof` reads them: decode, re-encode to the same bytes,
//! and verify (rebuild the root from the pages and siblings).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::tree::PageProof;
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = PageProof::decode(data) {
        same_bytes("page proof", data, &p.encode());
        let _ = p.verify();
    }
});
