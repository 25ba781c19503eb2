//! Config statements (kind 10) and signed statements (kind 2 over kind 10), as `config show`
//! and the server's config check read them: decode, re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::config::{ConfigStatement, SignedConfigStatement};
use vmattest_core::record::Signable;
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = <ConfigStatement as Signable>::decode(data) {
        let again = Signable::encode(&s).expect("a decoded statement encodes");
        same_bytes("config statement", data, &again);
    }
    if let Ok(signed) = SignedConfigStatement::decode(data) {
        let again = signed.encode().expect("a decoded signed statement encodes");
        same_bytes("signed config statement", data, &again);
    }
});
