//! Runtime evidence (kind 8) and the body of `POST /v1/evidence` (kind 2 over kind 8), which
//! the server decodes before anything else: decode, re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::attest::{Evidence, SignedEvidence};
use vmattest_core::record::Signable;
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = <Evidence as Signable>::decode(data) {
        let again = Signable::encode(&e).expect("decoded evidence encodes");
        same_bytes("evidence", data, &again);
    }
    if let Ok(signed) = SignedEvidence::decode(data) {
        let again = signed.encode().expect("decoded signed evidence encodes");
        same_bytes("signed evidence", data, &again);
    }
});
