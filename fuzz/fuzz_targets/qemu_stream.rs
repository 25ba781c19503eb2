//! QEMU's migration stream as a background snapshot writes it (`vmattest_qemu::stream`):
//! every page read lies within its block and comes once, and no more pages come than the
//! blocks have. A live capture's device-state stream made from any stream that reads whole
//! reads back with every page of the other blocks, once; reading the capabilities never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmattest_qemu::stream::{DeviceStream, MAX_OTHER_BLOCKS, Stream, capabilities};

fuzz_target!(|data: &[u8]| {
    let _ = capabilities(data);
    let Ok(mut s) = Stream::open(data) else {
        return;
    };
    let pages: Vec<u64> = s.blocks().iter().map(|b| b.pages()).collect();
    let mut device = DeviceStream::new(&s, 0).ok();
    let mut seen = std::collections::HashSet::new();
    loop {
        match s.next_page() {
            Ok(Some(p)) => {
                let of = pages[p.block];
                assert!(p.index < of, "page {} of a block of {of} pages", p.index);
                assert!(seen.insert((p.block, p.index)), "page {} twice", p.index);
                if let Some(d) = &mut device {
                    d.page(&p);
                }
            }
            Ok(None) => {
                if let (Ok(tail), Some(d)) = (s.device_state(), device) {
                    let other: u64 = pages.iter().skip(1).sum();
                    assert!(other * 4096 <= MAX_OTHER_BLOCKS);
                    let out = d.finish(&tail);
                    let mut back = Stream::open(&out[..]).expect("a device stream reads back");
                    let mut n = 0u64;
                    while let Some(p) = back.next_page().expect("its pages read back") {
                        assert_ne!(p.block, 0, "no page of guest RAM");
                        n += 1;
                    }
                    assert_eq!(n, other, "every page of the other blocks");
                    assert_eq!(back.device_state().expect("its device state"), tail);
                }
                break;
            }
            Err(_) => break,
        }
    }
    assert!(seen.len() as u64 <= pages.iter().sum());
});
