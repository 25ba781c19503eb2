//! Store files read from disk or from a bundle header: the first byte picks the secret file
//! (64 hex digits) or `store.json` (also the bundle header's store meta), whose parameters
//! must be derivable and which must serialize back to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::select;
use vmattest_store::{StoreMeta, StoreSecret};

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    if case % 2 == 0 {
        let _ = StoreSecret::parse(rest, "fuzz");
        return;
    }
    let Ok(meta) = serde_json::from_slice::<StoreMeta>(rest) else {
        return;
    };
    let _ = meta.params();
    let json = serde_json::to_vec(&meta).expect("store meta serializes");
    let again: StoreMeta = serde_json::from_slice(&json).expect("serialized store meta parses");
    assert_eq!(again, meta);
});
