//! Measurement records (kind 1) and signed records (kind 2 over kind 1), as `verify` reads
//! them: decode, re-encode to the same bytes. (Signature bytes: the `signature` target.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::record::{MeasurementRecord, Signed};
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = MeasurementRecord::decode(data) {
        let again = record.encode().expect("a decoded record encodes");
        same_bytes("measurement record", data, &again);
        for image in &record.images {
            let _ = image.pages();
        }
    }
    if let Ok(signed) = Signed::<MeasurementRecord>::decode(data) {
        let again = signed.encode().expect("a decoded signed record encodes");
        same_bytes("signed record", data, &again);
    }
});
