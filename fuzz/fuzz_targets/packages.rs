//! Package lists (`--packages MANIFEST`, `--dpkg-status F`, `--packages-from-image`): the
//! first byte picks the manifest or the status parser. An accepted list printed back as a
//! manifest parses to the same list, and turns into parameters or a naming error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_fuzz::select;
use vmattest_vmconfig::{package_params, parse_manifest, parse_status};

fuzz_target!(|data: &[u8]| {
    let (case, rest) = select(data);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let parsed = if case % 2 == 0 {
        parse_manifest(text, "fuzz")
    } else {
        parse_status(text, "fuzz")
    };
    let Ok(list) = parsed else {
        return;
    };
    let printed: String = list
        .iter()
        .map(|p| format!("{} {}\n", p.name, p.version))
        .collect();
    let again = match parse_manifest(&printed, "printed") {
        Ok(a) => a,
        Err(e) => panic!("an accepted package list does not parse back as a manifest: {e}"),
    };
    assert_eq!(again, list, "the printed list parses to another list");
    let _ = package_params(&list);
});
