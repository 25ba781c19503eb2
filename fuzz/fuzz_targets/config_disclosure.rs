//! Config disclosures (kind 11), as `config verify-disclosure` reads them: decode, re-encode
//! to the same bytes, verify the path against the embedded statement.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::config::{Disclosure, verify_disclosure};
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok((d, statement)) = Disclosure::decode(data) {
        let again = d.encode(&statement).expect("a decoded disclosure encodes");
        same_bytes("config disclosure", data, &again);
        let verified = d.verify(statement.value());
        let checked = verify_disclosure(data);
        assert_eq!(
            verified.as_ref().ok(),
            checked.as_ref().ok().map(|(p, _)| p),
            "Disclosure::verify and verify_disclosure disagree"
        );
    }
});
