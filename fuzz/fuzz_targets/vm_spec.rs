//! VM specs (TOML; `--vm SPEC`): parse, then build the QEMU command line and the canonical
//! config component, which must be JSON.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmattest_qemu::spec::VmSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = VmSpec::parse(text, Path::new("vm.toml"), Path::new("/nonexistent/vms")) else {
        return;
    };
    let _ = spec.command_line(false);
    let _ = spec.command_line(true);
    let config = spec.config_bytes();
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(&config) {
        panic!("config component is not JSON: {e}");
    }
});
