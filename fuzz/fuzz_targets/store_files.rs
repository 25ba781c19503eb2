//! Store files read from disk or from a bundle header: the first byte picks the secret file
//! (64 hex digits), `store.json` (also the bundle header's store meta), whose parameters
//! must be derivable and which must serialize back to an equal value, or a head cache base
//! diff (32-byte digests), which must re-encode to the same bytes and apply to any head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::select;
use vmattest_store::{StoreMeta, StoreSecret, apply_base_diff, encode_base_diff, parse_base_diff};

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    match case % 3 {
        0 => {
            let _ = StoreSecret::parse(rest, "fuzz");
            return;
        }
        2 => {
            if let Some(diff) = parse_base_diff(rest, 32) {
                assert_eq!(encode_base_diff(&diff), rest, "a base diff re-encodes");
                let head = vec![0u8; 32 * 64];
                if diff.0 <= 1 << 16 {
                    let base = apply_base_diff(head, rest, 32).expect("a parsed diff applies");
                    assert_eq!(base.len(), diff.0 * 32);
                }
            }
            return;
        }
        _ => {}
    }
    let Ok(meta) = serde_json::from_slice::<StoreMeta>(rest) else {
        return;
    };
    let _ = meta.params();
    let json = serde_json::to_vec(&meta).expect("store meta serializes");
    let again: StoreMeta = serde_json::from_slice(&json).expect("serialized store meta parses");
    assert_eq!(again, meta);
});
