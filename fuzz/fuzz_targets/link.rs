//! Chain links (kind 5), rebases (kind 12) and key revocations (kind 13), plain and signed
//! (kind 2 over them), as a store or a bundle holds them: decode, re-encode to the same bytes,
//! link digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_core::chain::{Link, Rebase, Revocation, link_digest};
use vmattest_core::record::{Signable, Signed};
use vmattest_core::wire::Kind;
use vmattest_fuzz::same_bytes;

/// Whether `data` is an object of the current version of `kind`: an older one is written back
/// at the current version.
fn current(data: &[u8], kind: Kind) -> bool {
    data.get(10..12) == Some(&kind.version().to_be_bytes()[..])
}

fuzz_target!(|data: &[u8]| {
    if let Ok(link) = <Link as Signable>::decode(data)
        && current(data, Kind::Link)
    {
        let again = Signable::encode(&link).expect("a decoded link encodes");
        same_bytes("link", data, &again);
    }
    if let Ok(signed) = Signed::<Link>::decode(data) {
        let again = signed.encode().expect("a decoded signed link encodes");
        same_bytes("signed link", data, &again);
        let _ = link_digest(&signed);
    }
    if let Ok(rebase) = <Rebase as Signable>::decode(data)
        && current(data, Kind::Rebase)
    {
        let again = Signable::encode(&rebase).expect("a decoded rebase encodes");
        same_bytes("rebase", data, &again);
    }
    if let Ok(signed) = Signed::<Rebase>::decode(data) {
        let again = signed.encode().expect("a decoded signed rebase encodes");
        same_bytes("signed rebase", data, &again);
    }
    if let Ok(rev) = <Revocation as Signable>::decode(data) {
        let again = Signable::encode(&rev).expect("a decoded revocation encodes");
        same_bytes("revocation", data, &again);
    }
    if let Ok(signed) = Signed::<Revocation>::decode(data) {
        let again = signed
            .encode()
            .expect("a decoded signed revocation encodes");
        same_bytes("signed revocation", data, &again);
    }
});
