//! Jump tables read from guest memory: the first 16 bytes choose the table's address and the
//! ranges kept, the rest is both the table and the memory its entries point into. Every site
//! that comes back is sorted, apart, of 2 or 5 bytes, and classifies its own bytes.
#![no_main]

#[path = "common/guest_memory.rs"]
mod guest_memory;

use libfuzzer_sys::fuzz_target;
use vmattest_core::attest::GuestAddr;
use vmattest_core::attest::patch::{MAX_SITE_LEN, SiteState, parse_jump_table};

fuzz_target!(|data: &[u8]| {
    let Some((start, span, mem)) = guest_memory::split(data) else {
        return;
    };
    let table = &mem[..mem.len() / 16 * 16];
    let read = |a: GuestAddr| {
        let mut b = [0u8; MAX_SITE_LEN];
        for (i, x) in b.iter_mut().enumerate() {
            let at = a.0.wrapping_sub(start).wrapping_add(i as u64);
            *x = usize::try_from(at)
                .ok()
                .and_then(|at| mem.get(at))
                .copied()
                .unwrap_or(0);
        }
        b
    };
    let Ok(sites) = parse_jump_table(table, GuestAddr(start), &[(0, span)], &read) else {
        return;
    };
    for w in sites.windows(2) {
        assert!(w[0].end() <= w[1].addr.0, "overlapping sites");
    }
    for s in &sites {
        assert!(s.len == 2 || s.len == 5);
        let bytes = read(s.addr);
        let st = s.classify(&bytes[..usize::from(s.len)]);
        if st != SiteState::Other {
            let e = s
                .encoding(st)
                .expect("a state it classifies has an encoding");
            assert_eq!(&e[..usize::from(s.len)], &bytes[..usize::from(s.len)]);
        }
    }
});
