//! Region policies (TOML; `policy resolve`, `POST /v1/policies`, the policy in a challenge)
//! with an optional System.map after the first NUL byte. A resolved policy must print
//! (`to_toml`) as TOML that parses back, without a System.map, to an equal policy with the
//! same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::attest::{Policy, PolicyFile, SystemMap};
use vmattest_fuzz::split2;

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
    let Ok(resolved) = file.resolve(map.as_ref()) else {
        return;
    };
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
