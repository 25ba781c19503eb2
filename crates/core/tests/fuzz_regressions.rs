//! Inputs the fuzz targets found (fuzz/regressions/, docs/FUZZING.md "Findings"). Each test
//! states what the decoder must do with the input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use vmattest_core::attest::{Evidence, Policy};
use vmattest_core::record::Signable;
use vmattest_core::tree::PageProof;

/// A page proof whose image length is within 4095 of 2^64: the last page's byte range
/// overflows (a panic with overflow checks; without them, a page of 4096 bytes is accepted where
/// the layout gives 4095). It must be refused.
#[test]
fn proof_of_an_image_length_near_2_pow_64_is_refused() {
    let bytes = include_bytes!("../../../fuzz/regressions/proof/image-len-overflow");
    assert!(PageProof::decode(bytes).is_err());
}

/// A region that ends in the last page below 2^64: rounding its end up to a page overflows (a
/// panic with overflow checks). It must be refused with a policy error.
#[test]
fn region_ending_in_the_last_page_of_the_address_space_is_refused() {
    let text = include_str!("../../../fuzz/regressions/policy/region-end-overflow.toml");
    assert!(Policy::parse(text, None).is_err());
}

/// 64 subsets without `all`: the resolved policy adds `all` and prints 65 subsets, which the
/// parser refuses, so `policy resolve` output for such a policy cannot be registered. The
/// printed policy must parse back to the same policy.
#[test]
fn resolved_policy_with_64_subsets_prints_as_toml_that_parses_back() {
    let text = include_str!("../../../fuzz/regressions/policy/64-subsets.toml");
    let policy = Policy::parse(text, None).unwrap();
    let again = Policy::parse(&policy.to_toml(), None).unwrap();
    assert_eq!(again, policy);
}

/// A site report of no sites in the exceptions form, where the writer uses the packed form:
/// two encodings of one evidence (it re-encoded 4 bytes shorter). It must be refused.
#[test]
fn regression_a_site_report_in_the_larger_form_is_refused() {
    let bytes = include_bytes!("../../../fuzz/regressions/evidence/site-report-larger-form");
    let e = Evidence::decode(bytes).unwrap_err().to_string();
    assert!(e.contains("the smaller form"), "{e}");
}
