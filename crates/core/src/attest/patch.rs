//! Kernel code that patches itself: jump-label (static key) sites read from the guest kernel's
//! own `__jump_table`, static-call sites and trampolines (`static_call`), the encodings each
//! site may legitimately hold, page masking and the per-site report that evidence carries
//! instead of the pages.
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
/// Static-call sites and trampolines are all 5 bytes.
pub const CALL_SITE_LEN: u8 = 5;
const NOP2: [u8; 2] = [0x66, 0x90];
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const JMP8: u8 = 0xeb;
const JMP32: u8 = 0xe9;
const INT3: u8 = 0xcc;
const CALL32: u8 = 0xe8;
/// `xor %eax,%eax` padded to 5 bytes: a static call to `__static_call_return0`.
const XOR5RAX: [u8; 5] = [0x2e, 0x2e, 0x2e, 0x31, 0xc0];
/// `ret; int3 x4`: a static tail call (or trampoline) of a NULL function.
const RET5: [u8; 5] = [0xc3, INT3, INT3, INT3, INT3];
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
    /// A static call's `call` to its target.
    Call,
    /// A static call of `__static_call_return0`: `xor %eax,%eax`.
    Xor,
    /// A static tail call or trampoline of no function: `ret`.
    Ret,
    /// Mid-patch forms of the three above.
    Int3Call,
    Int3Xor,
    Int3Ret,
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
            SiteState::Call => 4,
            SiteState::Xor => 5,
            SiteState::Ret => 6,
            SiteState::Int3Call => 7,
            SiteState::Int3Xor => 8,
            SiteState::Int3Ret => 9,
            SiteState::Other => 0xff,
        }
    }

    pub fn from_id(id: u8) -> Option<SiteState> {
        Some(match id {
            0 => SiteState::Nop,
            1 => SiteState::Jump,
            2 => SiteState::Int3Nop,
            3 => SiteState::Int3Jump,
            4 => SiteState::Call,
            5 => SiteState::Xor,
            6 => SiteState::Ret,
            7 => SiteState::Int3Call,
            8 => SiteState::Int3Xor,
            9 => SiteState::Int3Ret,
            0xff => SiteState::Other,
            _ => return None,
        })
    }

    /// An INT3 form: the kernel was patching the site when it was read.
    pub fn mid_patch(self) -> bool {
        matches!(
            self,
            SiteState::Int3Nop
                | SiteState::Int3Jump
                | SiteState::Int3Call
                | SiteState::Int3Xor
                | SiteState::Int3Ret
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            SiteState::Nop => "nop",
            SiteState::Jump => "jump",
            SiteState::Int3Nop => "int3+nop",
            SiteState::Int3Jump => "int3+jump",
            SiteState::Call => "call",
            SiteState::Xor => "xor",
            SiteState::Ret => "ret",
            SiteState::Int3Call => "int3+call",
            SiteState::Int3Xor => "int3+xor",
            SiteState::Int3Ret => "int3+ret",
            SiteState::Other => "other",
        }
    }
}

/// What patches a site, and so which encodings it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SiteKind {
    /// A jump label: a NOP or a jump to the site's `target`.
    Label,
    /// A static call's inline call: `call` to its key's function, a NOP (no function) or
    /// `xor %eax,%eax` (`__static_call_return0`).
    Call,
    /// A static call's inline tail call: `jmp` to its key's function, or `ret`.
    Tail,
    /// A static call's trampoline (`__SCT__*`): `jmp` to its function, or `ret`.
    Trampoline,
}

impl SiteKind {
    pub fn id(self) -> u8 {
        match self {
            SiteKind::Label => 0,
            SiteKind::Call => 1,
            SiteKind::Tail => 2,
            SiteKind::Trampoline => 3,
        }
    }

    pub fn from_id(id: u8) -> Option<SiteKind> {
        Some(match id {
            0 => SiteKind::Label,
            1 => SiteKind::Call,
            2 => SiteKind::Tail,
            3 => SiteKind::Trampoline,
            _ => return None,
        })
    }

    /// Whether the site's target is free (any function in kernel text) rather than fixed by
    /// its table; such sites are grouped, and every site of a group has one target.
    pub fn free_target(self) -> bool {
        self != SiteKind::Label
    }

    /// The states a site of this kind may legitimately hold.
    pub fn allows(self, state: SiteState) -> bool {
        use SiteState::*;
        match self {
            SiteKind::Label => matches!(state, Nop | Jump | Int3Nop | Int3Jump),
            SiteKind::Call => matches!(state, Call | Nop | Xor | Int3Call | Int3Nop | Int3Xor),
            SiteKind::Tail | SiteKind::Trampoline => {
                matches!(state, Jump | Ret | Int3Jump | Int3Ret)
            }
        }
    }

    /// What a site of this kind may hold, for a finding; `to` is a jump label's target.
    fn expected(self, len: u8, to: GuestAddr) -> String {
        match self {
            SiteKind::Label => format!("a {len}-byte nop or jump to {to}"),
            SiteKind::Call => {
                "a call to its static call's one target in kernel text, a nop or an xor".into()
            }
            SiteKind::Tail | SiteKind::Trampoline => {
                "a jmp to its static call's one target in kernel text, or a ret".into()
            }
        }
    }
}

/// One patch site: `len` bytes at `addr`. For a jump label, `target` is where its jump goes;
/// for a static-call site it is the static call's key (what groups its sites), and 0 for a
/// trampoline, which is a group of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatchSite {
    pub addr: GuestAddr,
    pub len: u8,
    pub target: GuestAddr,
    pub kind: SiteKind,
}

/// A 5-byte `op rel32` from `addr` to `to`.
fn rel32(op: u8, addr: u64, to: u64) -> Option<[u8; MAX_SITE_LEN]> {
    let next = addr.checked_add(MAX_SITE_LEN as u64)?;
    let rel = i64::try_from(to)
        .ok()?
        .checked_sub(i64::try_from(next).ok()?)?;
    let mut out = [0u8; MAX_SITE_LEN];
    out[0] = op;
    out[1..].copy_from_slice(&i32::try_from(rel).ok()?.to_le_bytes());
    Some(out)
}

/// Where the rel32 of the 5 bytes at `addr` goes.
fn rel32_target(addr: u64, bytes: &[u8]) -> Option<u64> {
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes.get(1..5)?);
    addr.checked_add(MAX_SITE_LEN as u64)?
        .checked_add_signed(i64::from(i32::from_le_bytes(word)))
}

impl PatchSite {
    pub fn end(&self) -> u64 {
        self.addr.0.saturating_add(u64::from(self.len))
    }

    fn jump(&self, to: u64) -> Option<[u8; MAX_SITE_LEN]> {
        if self.len == 5 {
            return rel32(JMP32, self.addr.0, to);
        }
        let next = self.addr.0.checked_add(u64::from(self.len))?;
        let rel = i64::try_from(to)
            .ok()?
            .checked_sub(i64::try_from(next).ok()?)?;
        let mut out = [0u8; MAX_SITE_LEN];
        out[0] = JMP8;
        out[1] = i8::try_from(rel).ok()?.to_le_bytes()[0];
        (self.len == 2).then_some(out)
    }

    fn nop(&self) -> &'static [u8] {
        if self.len == 2 { &NOP2 } else { &NOP5 }
    }

    /// The bytes a site in `state` holds; `None` for [`SiteState::Other`] or a jump whose
    /// target does not fit the site. A jump label's jump goes to its own target; a static
    /// call's call or jump to `to`.
    pub fn encoding_to(&self, state: SiteState, to: u64) -> Option<[u8; MAX_SITE_LEN]> {
        let mut out = [0u8; MAX_SITE_LEN];
        let n = usize::from(self.len);
        let five = |b: &[u8; 5]| (n == MAX_SITE_LEN).then_some(*b);
        out = match state {
            SiteState::Nop | SiteState::Int3Nop => {
                out[..n].copy_from_slice(self.nop());
                out
            }
            SiteState::Jump | SiteState::Int3Jump => self.jump(to)?,
            SiteState::Call | SiteState::Int3Call => five(&rel32(CALL32, self.addr.0, to)?)?,
            SiteState::Xor | SiteState::Int3Xor => five(&XOR5RAX)?,
            SiteState::Ret | SiteState::Int3Ret => five(&RET5)?,
            SiteState::Other => return None,
        };
        if state.mid_patch() {
            out[0] = INT3;
        }
        Some(out)
    }

    /// [`PatchSite::encoding_to`] with a jump label's own target.
    pub fn encoding(&self, state: SiteState) -> Option<[u8; MAX_SITE_LEN]> {
        self.encoding_to(state, self.target.0)
    }

    /// The state of `bytes` read at the site, and for a static-call state that names one,
    /// where it calls or jumps.
    pub fn read_state(&self, bytes: &[u8]) -> (SiteState, Option<u64>) {
        let n = usize::from(self.len);
        if bytes.len() != n {
            return (SiteState::Other, None);
        }
        if !self.kind.free_target() {
            return (self.classify(bytes), None);
        }
        let to = rel32_target(self.addr.0, bytes);
        [
            SiteState::Call,
            SiteState::Jump,
            SiteState::Nop,
            SiteState::Xor,
            SiteState::Ret,
            SiteState::Int3Nop,
            SiteState::Int3Xor,
            SiteState::Int3Ret,
            SiteState::Int3Call,
            SiteState::Int3Jump,
        ]
        .into_iter()
        .filter(|s| self.kind.allows(*s))
        .find_map(|s| {
            let to = if names_target(s) { to? } else { 0 };
            let e = self.encoding_to(s, to)?;
            (e[..n] == *bytes).then_some((s, names_target(s).then_some(to)))
        })
        .unwrap_or((SiteState::Other, None))
    }

    /// The state of a jump label's `bytes` (its encodings to its own target).
    pub fn classify(&self, bytes: &[u8]) -> SiteState {
        if self.kind.free_target() {
            return self.read_state(bytes).0;
        }
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

/// The address an `s32le` field (`bytes`, at offset `at` of a table at `start`) holds, relative
/// to the field itself; `None` beyond 2^64 or below 0.
pub(crate) fn relative(start: GuestAddr, at: u64, bytes: &[u8]) -> Option<u64> {
    let word: [u8; 4] = bytes.try_into().ok()?;
    start
        .0
        .checked_add(at)?
        .checked_add_signed(i64::from(i32::from_le_bytes(word)))
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
                kind: SiteKind::Label,
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
    let rel = |entry: u64, at: u64, bytes: &[u8]| {
        relative(start, at, bytes)
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
                kind: SiteKind::Label,
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

/// Whether a state's bytes depend on where the site calls or jumps.
fn names_target(state: SiteState) -> bool {
    matches!(
        state,
        SiteState::Jump | SiteState::Int3Jump | SiteState::Call | SiteState::Int3Call
    )
}

/// Digest of the bytes of the reported sites whose state holds a jump or call, each with its
/// index in the report: `H(domain || u64 count || (u32 index || bytes)*)`. Other states need
/// no digest: their bytes do not depend on any table, and any other bytes are state other.
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

/// The group of each site (`None` for jump labels), numbered in order of first appearance:
/// the static-call sites of one key and kind share a group, and each trampoline is its own.
pub fn site_groups(sites: &[PatchSite]) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut seen: std::collections::HashMap<(SiteKind, u64), usize> = Default::default();
    let mut firsts = Vec::new();
    let groups = sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let key = match s.kind {
                SiteKind::Label => return None,
                SiteKind::Trampoline => s.addr.0,
                SiteKind::Call | SiteKind::Tail => s.target.0,
            };
            Some(*seen.entry((s.kind, key)).or_insert_with(|| {
                firsts.push(i);
                firsts.len() - 1
            }))
        })
        .collect();
    (groups, firsts)
}

/// What evidence says about the patch sites of the pages it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteReport {
    /// One state per site, in address order.
    pub states: Vec<SiteState>,
    /// The bytes of each site in state [`SiteState::Other`], in order.
    pub others: Vec<Vec<u8>>,
    /// One per static-call group ([`site_groups`]): where its calls or jumps go, relative to
    /// the end of the group's first site; `None` when none of its sites calls or jumps.
    pub targets: Vec<Option<i32>>,
    /// [`sites_digest`] over the bytes the agent read at sites in a jump or call state.
    pub digest: Digest,
}

impl SiteReport {
    /// BLAKE3 over every field: equal fingerprints mean equal reports, so a verifier may
    /// remember one that passed instead of rebuilding its sites again.
    pub fn fingerprint(&self) -> Digest {
        let mut buf = Vec::with_capacity(self.states.len() + 5 * self.targets.len() + 80);
        buf.extend(self.states.iter().map(|s| s.id()));
        for o in &self.others {
            buf.extend_from_slice(&(o.len() as u64).to_be_bytes());
            buf.extend_from_slice(o);
        }
        for t in &self.targets {
            match t {
                None => buf.push(0),
                Some(t) => {
                    buf.push(1);
                    buf.extend_from_slice(&t.to_be_bytes());
                }
            }
        }
        buf.push(self.digest.alg().id());
        buf.extend_from_slice(self.digest.as_bytes());
        let counts = [self.states.len(), self.others.len(), self.targets.len()]
            .map(|n| (n as u64).to_be_bytes())
            .concat();
        HashAlg::Blake3.hash(&[b"vmattest site-report fingerprint v1\0", &counts, &buf])
    }
}

/// The report an agent makes of `sites`, whose bytes are `read`. A static-call site whose
/// target differs from its group's first is reported as state other.
pub fn report(alg: HashAlg, sites: &[PatchSite], read: &[Vec<u8>]) -> SiteReport {
    let (groups, firsts) = site_groups(sites);
    let mut to: Vec<Option<u64>> = vec![None; firsts.len()];
    let mut states = Vec::with_capacity(sites.len());
    let mut others = Vec::new();
    for ((s, b), g) in sites.iter().zip(read).zip(&groups) {
        let (mut st, t) = s.read_state(b);
        if let (Some(g), Some(t)) = (g, t) {
            match to[*g] {
                None => to[*g] = Some(t),
                Some(have) if have != t => st = SiteState::Other,
                Some(_) => {}
            }
        }
        if st == SiteState::Other {
            others.push(b.clone());
        }
        states.push(st);
    }
    let targets = to
        .iter()
        .zip(&firsts)
        .map(|(t, &first)| {
            let from = sites[first].end();
            t.and_then(|t| i32::try_from(i128::from(t) - i128::from(from)).ok())
        })
        .collect();
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
        targets,
        digest,
    }
}

/// Why a site report does not fit the baseline's sites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteFinding {
    /// The report covers another number of sites (or static-call groups) than the baseline
    /// has there.
    Count {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A site holds bytes none of its encodings has.
    Disallowed { site: PatchSite, bytes: Vec<u8> },
    /// A static call goes outside kernel text.
    Target { site: PatchSite, target: u64 },
    /// The states do not reproduce the bytes the agent read (its table differs).
    Digest,
}

impl SiteFinding {
    /// The site a finding is about, if one.
    pub fn site(&self) -> Option<&PatchSite> {
        match self {
            SiteFinding::Disallowed { site, .. } | SiteFinding::Target { site, .. } => Some(site),
            _ => None,
        }
    }

    /// What the finding says, for a region's detail.
    pub fn describe(&self) -> String {
        match self {
            SiteFinding::Count {
                what,
                expected,
                found,
            } => format!(
                "{what}: expected {expected} in these pages as in the baseline, found {found} \
                 (the guest's tables differ)"
            ),
            SiteFinding::Disallowed { site, bytes } => format!(
                "patch site at {} holds {}; expected {}",
                site.addr,
                if bytes.is_empty() {
                    "another state".into()
                } else {
                    hex::encode(bytes)
                },
                site.kind.expected(site.len, site.target)
            ),
            SiteFinding::Target { site, target } => format!(
                "static call at {} goes to {target:#x}, outside kernel text",
                site.addr
            ),
            SiteFinding::Digest => "patch sites: the bytes read are not the encodings their \
                 states name (a site jumps where its baseline entry does not)"
                .into(),
        }
    }
}

/// Checks a report against the baseline's `sites`: every state an allowed encoding, every
/// static call into `text` (`[start, end)`; none allowed without it), and the bytes those
/// encodings give hash to the reported digest.
pub fn check_report(
    alg: HashAlg,
    sites: &[PatchSite],
    report: &SiteReport,
    text: Option<(u64, u64)>,
) -> Result<(), SiteFinding> {
    let (groups, firsts) = site_groups(sites);
    check_grouped(alg, sites, &groups, &firsts, report, text)
}

/// A baseline's sites with their static-call groups ([`site_groups`]), found once: a server
/// checks every report of a VM against the same table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteTable {
    sites: Vec<PatchSite>,
    groups: Vec<Option<usize>>,
    firsts: Vec<usize>,
}

impl SiteTable {
    pub fn new(sites: Vec<PatchSite>) -> Self {
        let (groups, firsts) = site_groups(&sites);
        SiteTable {
            sites,
            groups,
            firsts,
        }
    }

    pub fn sites(&self) -> &[PatchSite] {
        &self.sites
    }

    /// [`check_report`] against the whole table.
    pub fn check(
        &self,
        alg: HashAlg,
        report: &SiteReport,
        text: Option<(u64, u64)>,
    ) -> Result<(), SiteFinding> {
        check_grouped(alg, &self.sites, &self.groups, &self.firsts, report, text)
    }
}

fn check_grouped(
    alg: HashAlg,
    sites: &[PatchSite],
    groups: &[Option<usize>],
    firsts: &[usize],
    report: &SiteReport,
    text: Option<(u64, u64)>,
) -> Result<(), SiteFinding> {
    if report.states.len() != sites.len() {
        return Err(SiteFinding::Count {
            what: "patch sites",
            expected: sites.len(),
            found: report.states.len(),
        });
    }
    if report.targets.len() != firsts.len() {
        return Err(SiteFinding::Count {
            what: "static-call groups",
            expected: firsts.len(),
            found: report.targets.len(),
        });
    }
    let to: Vec<Option<u64>> = report
        .targets
        .iter()
        .zip(firsts)
        .map(|(t, &first)| t.and_then(|t| sites[first].end().checked_add_signed(i64::from(t))))
        .collect();
    let mut jumps: Vec<(u32, [u8; MAX_SITE_LEN], usize)> = Vec::new();
    for (i, ((s, st), g)) in sites.iter().zip(&report.states).zip(groups).enumerate() {
        // A NOP of a jump label's length: the baseline's sites are 2 or 5 bytes.
        if *st == SiteState::Nop && s.kind == SiteKind::Label && (s.len == 2 || s.len == 5) {
            continue;
        }
        let target = match g {
            Some(g) if names_target(*st) => to.get(*g).copied().flatten(),
            Some(_) => Some(0),
            None => Some(s.target.0),
        };
        if let (Some(t), true) = (target, s.kind.free_target() && names_target(*st))
            && !text.is_some_and(|(lo, hi)| (lo..hi).contains(&t))
        {
            return Err(SiteFinding::Target {
                site: *s,
                target: t,
            });
        }
        let encoding = target
            .filter(|_| s.kind.allows(*st))
            .and_then(|t| s.encoding_to(*st, t));
        match encoding {
            Some(e) if names_target(*st) => {
                jumps.push((u32::try_from(i).unwrap_or(u32::MAX), e, usize::from(s.len)));
            }
            Some(_) => {}
            None => {
                // The first site without an encoding; only state other carries its bytes.
                let bytes = if *st == SiteState::Other {
                    report
                        .others
                        .get(count_others(&report.states[..i]))
                        .cloned()
                        .unwrap_or_default()
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

fn count_others(states: &[SiteState]) -> usize {
    states.iter().filter(|s| **s == SiteState::Other).count()
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
