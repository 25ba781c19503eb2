//! Static-call tables read from guest memory: the first 16 bytes choose where the tables sit
//! and the ranges kept, the rest is the site table, the trampolines' text and the memory the
//! sites point into. Sites come back sorted and apart; a report of their own bytes round-trips
//! through evidence and passes its check unless a site is other or a target lies outside
//! kernel text.
#![no_main]

#[path = "common/guest_memory.rs"]
mod guest_memory;

use libfuzzer_sys::fuzz_target;
use vmattest_core::alg::HashAlg;
use vmattest_core::attest::GuestAddr;
use vmattest_core::attest::patch::{SiteFinding, SiteState, check_report, report};
use vmattest_core::attest::static_call::{merge, parse_sites, parse_trampolines};

fuzz_target!(|data: &[u8]| {
    let Some((start, span, mem)) = guest_memory::split(data) else {
        return;
    };
    let half = mem.len() / 2;
    let (sites, tramps) = (
        &mem[..half / 8 * 8],
        &mem[half..half + (mem.len() - half) / 8 * 8],
    );
    let ranges = [(0, span)];
    let Ok(a) = parse_sites(sites, GuestAddr(start), &ranges) else {
        return;
    };
    let Ok(b) = parse_trampolines(tramps, GuestAddr(start + half as u64), &ranges) else {
        return;
    };
    let Ok(all) = merge(a, b) else {
        return;
    };
    for w in all.windows(2) {
        assert!(w[0].end() <= w[1].addr.0, "overlapping sites");
    }
    let read: Vec<Vec<u8>> = all
        .iter()
        .map(|s| {
            (0..u64::from(s.len))
                .map(|i| {
                    usize::try_from(s.addr.0.wrapping_sub(start).wrapping_add(i))
                        .ok()
                        .and_then(|at| mem.get(at))
                        .copied()
                        .unwrap_or(0)
                })
                .collect()
        })
        .collect();
    let r = report(HashAlg::Sha256, &all, &read);
    match check_report(HashAlg::Sha256, &all, &r, Some((0, u64::MAX))) {
        Ok(()) | Err(SiteFinding::Target { .. }) => {}
        Err(SiteFinding::Disallowed { .. }) => {
            assert!(
                r.states.contains(&SiteState::Other),
                "a legitimate site refused"
            )
        }
        Err(e) => panic!("a report of the sites' own bytes fails: {e:?}"),
    }
});
