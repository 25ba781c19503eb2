//! Runtime evidence (kind 8) and the body of `POST /v1/evidence` (kind 2 over kind 8), which
//! the server decodes before anything else: decode, re-encode to the same bytes (version 1,
//! still read, re-encodes as the current version: to the same value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::attest::{Evidence, SignedEvidence};
use vmattest_core::record::Signable;
use vmattest_core::wire::{Kind, open_versioned};
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = <Evidence as Signable>::decode(data) {
        let again = Signable::encode(&e).expect("decoded evidence encodes");
        let current =
            open_versioned(data, Kind::Evidence).is_ok_and(|(_, v)| v == Kind::Evidence.version());
        if current {
            same_bytes("evidence", data, &again);
        } else {
            let back = <Evidence as Signable>::decode(&again).expect("re-encoded evidence decodes");
            assert_eq!(back, e, "an older version re-encodes to the same value");
        }
    }
    if let Ok(signed) = SignedEvidence::decode(data) {
        let again = signed.encode().expect("decoded signed evidence encodes");
        same_bytes("signed evidence", data, &again);
    }
});
