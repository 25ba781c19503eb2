//! libvirt domain XML (`config measure --libvirt`), through the text entry point. Absolute
//! paths that exist must be the harness's small fixture files, so the measurement never hashes
//! a device or a large system file. The parameters must have valid, unique, sorted names.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::only_fixture_paths;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    if !only_fixture_paths(xml) {
        return;
    }
    // The layout a capture or restore reads from the same XML: it must never panic either.
    let _ = vmattest_vmconfig::domain::domain_layout(xml, Path::new("domain.xml"));
    let Ok(params) = vmattest_vmconfig::domain_params(xml, Path::new("domain.xml")) else {
        return;
    };
    for p in &params {
        assert!(
            vmattest_vmconfig::is_valid_name(&p.name),
            "bad name {:?}",
            p.name
        );
    }
    assert!(
        params.windows(2).all(|w| w[0].name < w[1].name),
        "parameters are not sorted by unique name"
    );
});
