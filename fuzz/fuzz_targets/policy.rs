//! Region policies (TOML; `policy resolve`, `POST /v1/policies`, the policy in a challenge)
//! with an optional System.map after the first NUL byte. A resolved policy must print
//! (`to_toml`) as TOML that parses back, without a System.map, to an equal policy with the
//! same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::attest::policy::MAX_SUBSETS;
use vmattest_core::attest::{Policy, PolicyFile, SystemMap};
use vmattest_fuzz::split2;

/// Known bug, reported (docs/FUZZING.md, findings): a region ending above 2^64 - 4096 makes
/// the page rounding in `resolve` overflow. Skipped until core refuses it; remove then.
fn region_end_overflows(file: &PolicyFile, map: Option<&SystemMap>) -> bool {
    let limit = u64::MAX - 4095;
    file.regions
        .iter()
        .any(|r| match (&r.symbols, r.start, r.len) {
            (None, Some(start), Some(len)) => start.checked_add(len).is_none_or(|end| end > limit),
            (Some([first, last]), None, None) => match (map, file.kernel_load) {
                (Some(m), Some(load)) => [first, last]
                    .iter()
                    .any(|s| m.phys(s, load).is_ok_and(|a| a > limit)),
                _ => false,
            },
            _ => false,
        })
}

fuzz_target!(|data: &[u8]| {
    let (policy, map) = split2(data, 0);
    let Ok(text) = std::str::from_utf8(policy) else {
        return;
    };
    let map = std::str::from_utf8(map)
        .ok()
        .filter(|m| !m.is_empty())
        .and_then(|m| SystemMap::parse(m).ok());
    let Ok(file) = PolicyFile::parse(text) else {
        return;
    };
    let _ = file.needs_symbols();
    if region_end_overflows(&file, map.as_ref()) {
        return;
    }
    let Ok(resolved) = file.resolve(map.as_ref()) else {
        return;
    };
    if resolved.subsets.len() > MAX_SUBSETS {
        // Known bug, reported: 64 subsets plus the implied `all` print as 65, which the parser
        // refuses. Skipped until fixed; remove then.
        return;
    }
    let printed = resolved.to_toml();
    let again = match Policy::parse(&printed, None) {
        Ok(p) => p,
        Err(e) => {
            panic!("a resolved policy prints as TOML that does not parse back: {e}\n{printed}")
        }
    };
    assert_eq!(
        again, resolved,
        "the printed policy parses to another policy"
    );
    assert_eq!(
        again.id(),
        resolved.id(),
        "the printed policy has another id"
    );
});
