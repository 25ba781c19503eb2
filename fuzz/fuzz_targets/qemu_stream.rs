//! QEMU's migration stream as a background snapshot writes it (`vmattest_qemu::stream`):
//! every page read lies within its block and comes once, and no more pages come than the
//! blocks have.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_qemu::stream::Stream;

fuzz_target!(|data: &[u8]| {
    let Ok(mut s) = Stream::open(data) else {
        return;
    };
    let pages: Vec<u64> = s.blocks().iter().map(|b| b.pages()).collect();
    let mut seen = std::collections::HashSet::new();
    loop {
        match s.next_page() {
            Ok(Some(p)) => {
                let of = pages[p.block];
                assert!(p.index < of, "page {} of a block of {of} pages", p.index);
                assert!(seen.insert((p.block, p.index)), "page {} twice", p.index);
            }
            Ok(None) => {
                let _ = s.device_state();
                break;
            }
            Err(_) => break,
        }
    }
    assert!(seen.len() as u64 <= pages.iter().sum());
});
