//! Static calls (x86-64, Linux 5.16 and later): the inline call sites the kernel lists in
//! `.static_call_sites` and the trampolines in `.static_call.text`.
//!
//! A site entry is 8 bytes: `s32 addr` and `s32 key`, each relative to its own field; the
//! key's low bits are flags (1: a tail call, 2: in init text, freed after boot). A trampoline
//! is 8 bytes: a 5-byte `jmp` or `ret` followed by the signature `0f b9 cc` (`ud1`). Unlike a
//! jump label, a static call may go to any function, so its sites are grouped by key and
//! every site of a group must call the same target (docs/POLICY.md).

use super::patch::{CALL_SITE_LEN, MAX_SITE_LEN, PatchSite, SiteKind, relative};
use super::{AttestError, GuestAddr};

pub const SITE_ENTRY_BYTES: u64 = 8;
pub const TRAMPOLINE_BYTES: u64 = 8;
/// 1 Mi entries (or trampolines); a distribution kernel has about 4,100 sites and 700
/// trampolines.
pub const MAX_TABLE_BYTES: u64 = 8 << 20;
const TAIL: u64 = 1;
const INIT: u64 = 2;
const FLAGS: u64 = 3;
const TRAMPOLINE_SIGNATURE: [u8; 3] = [0x0f, 0xb9, 0xcc];

fn bad(table: &'static str, entry: u64, expected: &str, found: impl ToString) -> AttestError {
    AttestError::StaticCallTable {
        table,
        entry,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

fn check_len(table: &'static str, len: u64, unit: u64) -> Result<(), AttestError> {
    if len > MAX_TABLE_BYTES || !len.is_multiple_of(unit) {
        return Err(bad(
            table,
            0,
            &format!("a multiple of {unit} bytes, at most {MAX_TABLE_BYTES}"),
            format!("{len} bytes"),
        ));
    }
    Ok(())
}

fn touches(ranges: &[(u64, u64)], addr: u64) -> bool {
    ranges
        .iter()
        .any(|&(lo, hi)| addr < hi && addr.saturating_add(MAX_SITE_LEN as u64) > lo)
}

/// The static-call sites in `table` (at guest-physical `start`) that overlap one of `ranges`,
/// sorted. Sites in init text are left out: that text is freed once the kernel has booted.
pub fn parse_sites(
    table: &[u8],
    start: GuestAddr,
    ranges: &[(u64, u64)],
) -> Result<Vec<PatchSite>, AttestError> {
    const NAME: &str = "static_call_sites";
    check_len(NAME, table.len() as u64, SITE_ENTRY_BYTES)?;
    let rel = |entry: u64, field: u64, bytes: &[u8]| {
        relative(start, field, bytes).ok_or_else(|| {
            bad(
                NAME,
                entry,
                "an address within 2^64",
                "an overflowing offset",
            )
        })
    };
    let mut sites = Vec::new();
    for (i, e) in table.chunks_exact(8).enumerate() {
        let i = i as u64;
        let at = i * SITE_ENTRY_BYTES;
        let addr = rel(i, at, &e[0..4])?;
        let key = rel(i, at + 4, &e[4..8])?;
        if key & INIT != 0 || !touches(ranges, addr) {
            continue;
        }
        sites.push(PatchSite {
            addr: GuestAddr(addr),
            len: CALL_SITE_LEN,
            target: GuestAddr(key & !FLAGS),
            kind: if key & TAIL != 0 {
                SiteKind::Tail
            } else {
                SiteKind::Call
            },
        });
    }
    sites.sort_unstable();
    Ok(sites)
}

/// The trampolines of `text` (the bytes of `.static_call.text`, at guest-physical `start`)
/// that overlap one of `ranges`; each slot must end in the trampoline signature.
pub fn parse_trampolines(
    text: &[u8],
    start: GuestAddr,
    ranges: &[(u64, u64)],
) -> Result<Vec<PatchSite>, AttestError> {
    const NAME: &str = "static_call_trampolines";
    check_len(NAME, text.len() as u64, TRAMPOLINE_BYTES)?;
    let mut out = Vec::new();
    for (i, slot) in text.chunks_exact(8).enumerate() {
        let i = i as u64;
        if slot[MAX_SITE_LEN..] != TRAMPOLINE_SIGNATURE {
            return Err(bad(
                NAME,
                i,
                "a trampoline ending in 0fb9cc",
                hex::encode(slot),
            ));
        }
        let addr = start
            .0
            .checked_add(i * TRAMPOLINE_BYTES)
            .ok_or_else(|| bad(NAME, i, "an address within 2^64", "an overflow"))?;
        if touches(ranges, addr) {
            out.push(PatchSite {
                addr: GuestAddr(addr),
                len: CALL_SITE_LEN,
                target: GuestAddr(0),
                kind: SiteKind::Trampoline,
            });
        }
    }
    Ok(out)
}

/// Jump-label and static-call sites in one sorted list; overlapping sites are refused.
pub fn merge(mut a: Vec<PatchSite>, b: Vec<PatchSite>) -> Result<Vec<PatchSite>, AttestError> {
    a.extend(b);
    a.sort_unstable();
    if let Some(w) = a.windows(2).find(|w| w[0].end() > w[1].addr.0) {
        return Err(bad(
            "static_call_sites",
            0,
            "sites that do not overlap",
            format!("sites at {} and {}", w[0].addr, w[1].addr),
        ));
    }
    Ok(a)
}
