//! Page batches (kind 6), as a replay decodes them once they hashed to the id a signed manifest
//! names: the first byte picks the expected length (0: the length the batch claims, so the
//! zstd frame is reached; n: n pages). A decoded batch has exactly the expected length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::select;

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    // Envelope header (16 bytes), sealed flag, then the raw length.
    let claimed = rest
        .get(17..25)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
        .and_then(|n| usize::try_from(n).ok());
    let expect = match case {
        0 => claimed.unwrap_or(0),
        n => usize::from(n) * 4096,
    };
    if let Ok(pages) = vmattest_store::decode_plain_batch(rest, expect) {
        assert_eq!(pages.len(), expect, "decoded length");
    }
});
