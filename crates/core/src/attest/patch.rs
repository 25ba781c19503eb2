//! Kernel code that patches itself: jump-label (static key) sites read from the guest kernel's
//! own `__jump_table`, the encodings each site may legitimately hold, page masking and the
//! per-site report that evidence carries instead of the pages.
//!
//! An x86-64 jump entry is 16 bytes: `s32 code`, `s32 target` (each relative to its own field)
//! and `s64 key` (relative, low bits flags). The kernel switches a site between a NOP and a
//! jump to `target` of the same length (2 or 5 bytes); while it does, `text_poke_bp` leaves an
//! INT3 in the first byte and either length's old or new tail behind it.

use std::borrow::Cow;

use super::{AttestError, GuestAddr};
use crate::alg::{Digest, HashAlg, PAGE_SIZE, PageIndex};

pub const JUMP_ENTRY_BYTES: u64 = 16;
/// 1 Mi entries; a distribution kernel has about 6,300.
pub const MAX_JUMP_TABLE_BYTES: u64 = 16 << 20;
pub const MAX_SITE_LEN: usize = 5;
const NOP2: [u8; 2] = [0x66, 0x90];
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const JMP8: u8 = 0xeb;
const JMP32: u8 = 0xe9;
const INT3: u8 = 0xcc;
const SITES_DOMAIN: &[u8] = b"vmattest patch-sites v1\0";

/// What a site holds, as the agent classifies it against its jump entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SiteState {
    Nop,
    Jump,
    /// Mid-patch: INT3, then the NOP's tail.
    Int3Nop,
    /// Mid-patch: INT3, then the jump's tail.
    Int3Jump,
    /// None of the above; the evidence carries the bytes.
    Other,
}

impl SiteState {
    pub fn id(self) -> u8 {
        match self {
            SiteState::Nop => 0,
            SiteState::Jump => 1,
            SiteState::Int3Nop => 2,
            SiteState::Int3Jump => 3,
            SiteState::Other => 0xff,
        }
    }

    pub fn from_id(id: u8) -> Option<SiteState> {
        Some(match id {
            0 => SiteState::Nop,
            1 => SiteState::Jump,
            2 => SiteState::Int3Nop,
            3 => SiteState::Int3Jump,
            0xff => SiteState::Other,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SiteState::Nop => "nop",
            SiteState::Jump => "jump",
            SiteState::Int3Nop => "int3+nop",
            SiteState::Int3Jump => "int3+jump",
            SiteState::Other => "other",
        }
    }
}

/// One jump-label site: `len` bytes at `addr` that jump to `target` or do nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatchSite {
    pub addr: GuestAddr,
    pub len: u8,
    pub target: GuestAddr,
}

impl PatchSite {
    pub fn end(&self) -> u64 {
        self.addr.0.saturating_add(u64::from(self.len))
    }

    fn jump(&self) -> Option<[u8; MAX_SITE_LEN]> {
        let next = self.addr.0.checked_add(u64::from(self.len))?;
        let rel = i64::try_from(self.target.0)
            .ok()?
            .checked_sub(i64::try_from(next).ok()?)?;
        let mut out = [0u8; MAX_SITE_LEN];
        match self.len {
            2 => {
                out[0] = JMP8;
                out[1] = i8::try_from(rel).ok()?.to_le_bytes()[0];
            }
            5 => {
                out[0] = JMP32;
                out[1..].copy_from_slice(&i32::try_from(rel).ok()?.to_le_bytes());
            }
            _ => return None,
        }
        Some(out)
    }

    fn nop(&self) -> &'static [u8] {
        if self.len == 2 { &NOP2 } else { &NOP5 }
    }

    /// The bytes a site in `state` holds; `None` for [`SiteState::Other`] or a jump whose
    /// target does not fit the site.
    pub fn encoding(&self, state: SiteState) -> Option<[u8; MAX_SITE_LEN]> {
        let mut out = [0u8; MAX_SITE_LEN];
        let n = usize::from(self.len);
        match state {
            SiteState::Nop => out[..n].copy_from_slice(self.nop()),
            SiteState::Jump => out = self.jump()?,
            SiteState::Int3Nop => {
                out[..n].copy_from_slice(self.nop());
                out[0] = INT3;
            }
            SiteState::Int3Jump => {
                out = self.jump()?;
                out[0] = INT3;
            }
            SiteState::Other => return None,
        }
        Some(out)
    }

    pub fn classify(&self, bytes: &[u8]) -> SiteState {
        let n = usize::from(self.len);
        [
            SiteState::Nop,
            SiteState::Jump,
            SiteState::Int3Nop,
            SiteState::Int3Jump,
        ]
        .into_iter()
        .find(|s| {
            self.encoding(*s)
                .is_some_and(|e| bytes.len() == n && e[..n] == *bytes)
        })
        .unwrap_or(SiteState::Other)
    }
}

fn bad(entry: u64, expected: &str, found: impl ToString) -> AttestError {
    AttestError::PatchTable {
        entry,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

/// The site length the bytes at a site imply: a jump or NOP of 2 or 5 bytes, or either with an
/// INT3 over its first byte (mid-patch), whose tail is then the NOP's or the jump's to `target`.
fn site_len(code: &[u8; MAX_SITE_LEN], addr: u64, target: u64) -> Option<u8> {
    match code[0] {
        JMP8 => Some(2),
        JMP32 => Some(5),
        _ if *code == NOP5 => Some(5),
        _ if code[..2] == NOP2 => Some(2),
        INT3 => [5u8, 2].into_iter().find(|&len| {
            let site = PatchSite {
                addr: GuestAddr(addr),
                len,
                target: GuestAddr(target),
            };
            matches!(
                site.classify(&code[..usize::from(len)]),
                SiteState::Int3Nop | SiteState::Int3Jump
            )
        }),
        _ => None,
    }
}

/// Parses a jump table of `table.len()` bytes at guest-physical `start`, keeping the sites
/// that overlap one of `ranges` (`[start, end)` pairs). `read` gives the bytes at a site, to
/// learn its length. Sites come back sorted, and overlapping sites are refused.
pub fn parse_jump_table(
    table: &[u8],
    start: GuestAddr,
    ranges: &[(u64, u64)],
    read: &dyn Fn(GuestAddr) -> [u8; MAX_SITE_LEN],
) -> Result<Vec<PatchSite>, AttestError> {
    let len = table.len() as u64;
    if len > MAX_JUMP_TABLE_BYTES || !len.is_multiple_of(JUMP_ENTRY_BYTES) {
        return Err(bad(
            0,
            &format!("a multiple of 16 bytes, at most {MAX_JUMP_TABLE_BYTES}"),
            format!("{len} bytes"),
        ));
    }
    let rel = |entry: u64, at: u64, bytes: &[u8]| -> Result<u64, AttestError> {
        let mut word = [0u8; 4];
        word.copy_from_slice(bytes);
        start
            .0
            .checked_add(at)
            .and_then(|field| field.checked_add_signed(i64::from(i32::from_le_bytes(word))))
            .ok_or_else(|| bad(entry, "an address within 2^64", "an overflowing offset"))
    };
    let mut sites = Vec::new();
    for (i, e) in table.chunks_exact(16).enumerate() {
        let i = i as u64;
        let at = i * JUMP_ENTRY_BYTES;
        let code = rel(i, at, &e[0..4])?;
        let touches = |len: u64| {
            ranges
                .iter()
                .any(|&(lo, hi)| code < hi && code.saturating_add(len) > lo)
        };
        if !touches(MAX_SITE_LEN as u64) {
            continue;
        }
        let target = rel(i, at + 4, &e[4..8])?;
        let bytes = read(GuestAddr(code));
        let len = site_len(&bytes, code, target).ok_or_else(|| {
            bad(
                i,
                &format!("a jump or NOP of 2 or 5 bytes at {code:#x}"),
                hex::encode(bytes),
            )
        })?;
        if touches(u64::from(len)) {
            sites.push(PatchSite {
                addr: GuestAddr(code),
                len,
                target: GuestAddr(target),
            });
        }
    }
    sites.sort_unstable();
    if let Some(w) = sites.windows(2).find(|w| w[0].end() > w[1].addr.0) {
        return Err(bad(
            0,
            "sites that do not overlap",
            format!("sites at {} and {}", w[0].addr, w[1].addr),
        ));
    }
    Ok(sites)
}

/// The sites (of `sites`, sorted) with a byte in `[lo, hi)`.
pub fn sites_in(sites: &[PatchSite], lo: u64, hi: u64) -> &[PatchSite] {
    let first = sites.partition_point(|s| s.end() <= lo);
    let last = sites.partition_point(|s| s.addr.0 < hi);
    sites.get(first..last.max(first)).unwrap_or(&[])
}

/// Zeroes the bytes of `sites` that fall in `page`, which starts at `page_addr`.
pub fn mask_page(page: &mut [u8], page_addr: u64, sites: &[PatchSite]) {
    let end = page_addr.saturating_add(page.len() as u64);
    for s in sites_in(sites, page_addr, end) {
        let lo = s.addr.0.max(page_addr) - page_addr;
        let hi = s.end().min(end) - page_addr;
        if let (Ok(lo), Ok(hi)) = (usize::try_from(lo), usize::try_from(hi)) {
            page[lo..hi].fill(0);
        }
    }
}

/// Whether a state's bytes depend on the site's target (and so on a jump table the server
/// must not take from the guest).
fn names_target(state: SiteState) -> bool {
    matches!(state, SiteState::Jump | SiteState::Int3Jump)
}

/// Digest of the bytes of the reported sites whose state holds a jump, each with its index
/// in the report: `H(domain || u64 count || (u32 index || bytes)*)`. NOPs need no digest:
/// their bytes do not depend on the table, and any other bytes are state other.
pub fn sites_digest<'a>(alg: HashAlg, jumps: impl Iterator<Item = (u32, &'a [u8])>) -> Digest {
    let mut body = Vec::new();
    let mut count = 0u64;
    for (i, bytes) in jumps {
        body.extend_from_slice(&i.to_be_bytes());
        body.extend_from_slice(bytes);
        count += 1;
    }
    alg.hash(&[SITES_DOMAIN, &count.to_be_bytes()[..], &body[..]])
}

/// What evidence says about the patch sites of the pages it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteReport {
    /// One state per site, in address order.
    pub states: Vec<SiteState>,
    /// The bytes of each site in state [`SiteState::Other`], in order.
    pub others: Vec<Vec<u8>>,
    /// [`sites_digest`] over the bytes the agent read at sites in a jump state.
    pub digest: Digest,
}

/// The report an agent makes of `sites`, whose bytes are `read`.
pub fn report(alg: HashAlg, sites: &[PatchSite], read: &[Vec<u8>]) -> SiteReport {
    let mut states = Vec::with_capacity(sites.len());
    let mut others = Vec::new();
    for (s, b) in sites.iter().zip(read) {
        let st = s.classify(b);
        if st == SiteState::Other {
            others.push(b.clone());
        }
        states.push(st);
    }
    let digest = sites_digest(
        alg,
        states
            .iter()
            .zip(read)
            .enumerate()
            .filter(|(_, (st, _))| names_target(**st))
            .map(|(i, (_, b))| (u32::try_from(i).unwrap_or(u32::MAX), b.as_slice())),
    );
    SiteReport {
        states,
        others,
        digest,
    }
}

/// Why a site report does not fit the baseline's sites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteFinding {
    /// The report covers another number of sites than the baseline has there.
    Count { expected: usize, found: usize },
    /// A site holds bytes none of its encodings has.
    Disallowed { site: PatchSite, bytes: Vec<u8> },
    /// The states do not reproduce the bytes the agent read (its table differs).
    Digest,
}

/// Checks a report against the baseline's `sites`: every state an allowed encoding, and the
/// bytes those encodings give hash to the reported digest.
pub fn check_report(
    alg: HashAlg,
    sites: &[PatchSite],
    report: &SiteReport,
) -> Result<(), SiteFinding> {
    if report.states.len() != sites.len() {
        return Err(SiteFinding::Count {
            expected: sites.len(),
            found: report.states.len(),
        });
    }
    let mut others = report.others.iter();
    let mut jumps: Vec<(u32, [u8; MAX_SITE_LEN], usize)> = Vec::new();
    for (i, (s, st)) in sites.iter().zip(&report.states).enumerate() {
        // A NOP of the site's length: the baseline's sites are 2 or 5 bytes.
        if *st == SiteState::Nop && (s.len == 2 || s.len == 5) {
            continue;
        }
        match s.encoding(*st) {
            Some(e) if names_target(*st) => {
                jumps.push((u32::try_from(i).unwrap_or(u32::MAX), e, usize::from(s.len)));
            }
            Some(_) => {}
            None => {
                // The first site without an encoding; only state other carries its bytes.
                let bytes = if *st == SiteState::Other {
                    others.next().cloned().unwrap_or_default()
                } else {
                    Vec::new()
                };
                return Err(SiteFinding::Disallowed { site: *s, bytes });
            }
        }
    }
    let want = sites_digest(alg, jumps.iter().map(|(i, e, n)| (*i, &e[..*n])));
    if want.ct_eq(&report.digest) {
        Ok(())
    } else {
        Err(SiteFinding::Digest)
    }
}

/// The sites with a byte in one of `pages` (indices from `region_start`, ascending), once each.
pub fn sites_of_pages<'a>(
    sites: &'a [PatchSite],
    region_start: GuestAddr,
    region_pages: u64,
    pages: &[PageIndex],
) -> Cow<'a, [PatchSite]> {
    let page = PAGE_SIZE as u64;
    let at = |i: u64| region_start.0.saturating_add(i.saturating_mul(page));
    if pages.len() as u64 == region_pages {
        return Cow::Borrowed(sites_in(sites, at(0), at(region_pages)));
    }
    let mut out: Vec<PatchSite> = Vec::new();
    for p in pages {
        for s in sites_in(sites, at(p.0), at(p.0.saturating_add(1))) {
            if out.last() != Some(s) {
                out.push(*s);
            }
        }
    }
    Cow::Owned(out)
}
