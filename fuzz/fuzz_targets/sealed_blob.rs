//! Sealed store secrets (`tpm seal` output; `--secret BLOB`): decode, re-encode to the same
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::same_bytes;
use vmattest_tpm::SealedBlob;

fuzz_target!(|data: &[u8]| {
    if let Ok(blob) = SealedBlob::from_bytes(data) {
        let again = blob.to_bytes().expect("a decoded sealed blob encodes");
        same_bytes("sealed blob", data, &again);
    }
});
