//! Reference configurations (TOML; `config check`, `vm launch`, `PUT .../reference-config`).
//! A parsed reference must accept the parameters that meet each of its rules, and refuse each
//! parameter changed to break its rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::config::{ConfigParam, Reference, ReferenceRule};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = Reference::parse(text) else {
        return;
    };
    let _ = reference.strict();
    let mut params = Vec::new();
    for (name, rule) in reference.rules() {
        let _ = rule.describe();
        let value = match rule {
            ReferenceRule::Equals(v) => v.clone(),
            ReferenceRule::Range(min, _) => min.to_string(),
            ReferenceRule::OneOf(vs) => vs[0].clone(),
            ReferenceRule::Absent => continue,
        };
        params.push(ConfigParam::new(name.clone(), value));
    }
    let mismatches = reference.check(&params);
    assert!(
        mismatches.is_empty(),
        "parameters that meet every rule are refused: {mismatches:?}"
    );
    // Break one rule at a time: the check must name exactly that parameter (in strict mode an
    // extra, unnamed parameter is named too).
    for (name, rule) in reference.rules().iter().take(8) {
        let mut broken: Vec<ConfigParam> =
            params.iter().filter(|p| &p.name != name).cloned().collect();
        match rule {
            ReferenceRule::Absent => broken.push(ConfigParam::new(name.clone(), "x")),
            ReferenceRule::Range(_, max) => match max.checked_add(1) {
                Some(over) => broken.push(ConfigParam::new(name.clone(), over.to_string())),
                None => broken.push(ConfigParam::new(name.clone(), "-1")),
            },
            _ => {} // absent breaks an exact value and a set
        }
        let found = reference.check(&broken);
        assert!(
            found.iter().any(|m| &m.name == name),
            "a broken rule for {name} is not reported: {found:?}"
        );
    }
});
