//! Config openings (the private file `config.opening`; also hex in the server's config check
//! request): decode, re-encode to the same bytes; then disclose the first and the last
//! parameter under a statement of the opening's root and check that both disclosures verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::config::{ConfigOpening, verify_disclosure};
use vmattest_core::record::{SignatureEntry, Signed, UnixTime};
use vmattest_core::sig::{KeyId, SigAlg};
use vmattest_fuzz::same_bytes;

fuzz_target!(|data: &[u8]| {
    let Ok(opening) = ConfigOpening::decode(data) else {
        return;
    };
    same_bytes("config opening", data, &opening.encode());
    let key = KeyId([7; 32]);
    let time = UnixTime { secs: 1, nanos: 0 };
    let statement = opening.statement("fuzz", time, &[], vec![key]);
    let mut signed = Signed::new(statement).expect("the opening's statement encodes");
    signed.signatures.push(SignatureEntry {
        alg: SigAlg::Ed25519,
        key_id: key,
        signature: vec![0; 64],
    });
    let params = opening.params();
    for (param, _) in [params.first(), params.last()].into_iter().flatten() {
        let bytes = opening
            .disclose_signed(&param.name, &signed)
            .expect("every parameter of an opening discloses");
        let (found, _) = verify_disclosure(&bytes).expect("a fresh disclosure verifies");
        assert_eq!(&found, param, "the disclosure names another parameter");
    }
});
