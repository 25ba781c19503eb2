//! Snapshot reports (kind 9) and the body of `POST /v1/vms/{vm}/reports` (kind 2 over
//! kind 9): decode, re-encode to the same bytes, verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::attest::{SignedSnapshotReport, SnapshotReport};
use vmattest_core::record::Signable;
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = <SnapshotReport as Signable>::decode(data) {
        let again = Signable::encode(&r).expect("a decoded report encodes");
        same_bytes("snapshot report", data, &again);
        let _ = r.verdict();
    }
    if let Ok(signed) = SignedSnapshotReport::decode(data) {
        let again = signed.encode().expect("a decoded signed report encodes");
        same_bytes("signed snapshot report", data, &again);
    }
});
