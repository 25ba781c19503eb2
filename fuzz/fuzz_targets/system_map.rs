//! System.map symbol tables (`policy resolve --system-map`): parse, then resolve every
//! symbol against `_text` at a load address taken from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::attest::SystemMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(map) = SystemMap::parse(text) else {
        return;
    };
    let load = text.len() as u64 * 0x1000;
    for line in text.lines().take(64) {
        if let Some(name) = line.split_ascii_whitespace().nth(2) {
            assert!(map.addr(name).is_some(), "a listed symbol is not found");
            let _ = map.phys(name, load);
            let _ = map.phys(name, u64::MAX - load);
        }
    }
});
