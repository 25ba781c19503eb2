//! Chain links (kind 5) and signed links (kind 2 over kind 5), as a store or a bundle holds
//! them: decode, re-encode to the same bytes, link digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::chain::{Link, link_digest};
use vmattest_core::record::{Signable, Signed};
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(link) = <Link as Signable>::decode(data) {
        let again = Signable::encode(&link).expect("a decoded link encodes");
        same_bytes("link", data, &again);
    }
    if let Ok(signed) = Signed::<Link>::decode(data) {
        let again = signed.encode().expect("a decoded signed link encodes");
        same_bytes("signed link", data, &again);
        let _ = link_digest(&signed);
    }
});
