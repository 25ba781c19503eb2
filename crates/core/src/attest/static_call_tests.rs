#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::GuestAddr;
use super::evidence::{Evidence, SiteEvidence};
use super::patch::*;
use super::static_call::*;
use crate::alg::HashAlg;
use crate::record::Signable;

const TEXT: (u64, u64) = (0x1000, 0x3000);
const SITES: u64 = 0x4000;
const TRAMPS: u64 = 0x2f00;
const NOP5: [u8; 5] = [0x0f, 0x1f, 0x44, 0x00, 0x00];
const XOR: [u8; 5] = [0x2e, 0x2e, 0x2e, 0x31, 0xc0];
const RET: [u8; 5] = [0xc3, 0xcc, 0xcc, 0xcc, 0xcc];

fn op32(op: u8, at: u64, to: u64) -> [u8; 5] {
    let rel = i32::try_from(i64::try_from(to).unwrap() - i64::try_from(at + 5).unwrap()).unwrap();
    let mut v = [op, 0, 0, 0, 0];
    v[1..].copy_from_slice(&rel.to_le_bytes());
    v
}

/// A fake kernel: text at 0x1000-0x3000 (trampolines at 0x2f00), a site table at 0x4000
/// and keys at 0x5000.
struct Kernel {
    ram: Vec<u8>,
    entries: u64,
    tramps: u64,
}

impl Kernel {
    /// `(site, key | flags)` entries, relative to their own fields.
    fn new(entries: &[(u64, u64)], tramps: u64) -> Kernel {
        let mut ram = vec![0x90u8; 0x6000];
        for (i, &(site, key)) in entries.iter().enumerate() {
            let e = SITES + 8 * i as u64;
            let rel = |to: u64, from: u64| {
                i32::try_from(i64::try_from(to).unwrap() - i64::try_from(from).unwrap()).unwrap()
            };
            let at = usize::try_from(e).unwrap();
            ram[at..at + 4].copy_from_slice(&rel(site, e).to_le_bytes());
            ram[at + 4..at + 8].copy_from_slice(&rel(key, e + 4).to_le_bytes());
        }
        for t in 0..tramps {
            let at = usize::try_from(TRAMPS + 8 * t).unwrap();
            ram[at..at + 8].copy_from_slice(&[0xc3, 0xcc, 0xcc, 0xcc, 0xcc, 0x0f, 0xb9, 0xcc]);
        }
        Kernel {
            ram,
            entries: entries.len() as u64,
            tramps,
        }
    }

    fn put(&mut self, at: u64, b: &[u8]) {
        let at = usize::try_from(at).unwrap();
        self.ram[at..at + b.len()].copy_from_slice(b);
    }

    fn sites(&self) -> Result<Vec<PatchSite>, super::AttestError> {
        let s = usize::try_from(SITES).unwrap();
        let t = usize::try_from(TRAMPS).unwrap();
        let n = usize::try_from(self.entries * 8).unwrap();
        let m = usize::try_from(self.tramps * 8).unwrap();
        let ranges = [TEXT];
        merge(
            parse_sites(&self.ram[s..s + n], GuestAddr(SITES), &ranges)?,
            parse_trampolines(&self.ram[t..t + m], GuestAddr(TRAMPS), &ranges)?,
        )
    }

    fn report(&self, sites: &[PatchSite]) -> SiteReport {
        let read: Vec<Vec<u8>> = sites
            .iter()
            .map(|s| {
                let at = usize::try_from(s.addr.0).unwrap();
                self.ram[at..at + 5].to_vec()
            })
            .collect();
        report(HashAlg::Sha256, sites, &read)
    }
}

const KEY_A: u64 = 0x5000;
const KEY_B: u64 = 0x5010;

/// Two calls and a tail call of key A, a call of key B, an init-text site and one trampoline,
/// all calling `f` at 0x1800 (B: a NOP).
fn sample() -> Kernel {
    let mut k = Kernel::new(
        &[
            (0x1100, KEY_A),
            (0x2200, KEY_A),
            (0x1200, KEY_A | 1),
            (0x1300, KEY_B),
            (0x1400, KEY_B | 2),
        ],
        1,
    );
    k.put(0x1100, &op32(0xe8, 0x1100, 0x1800));
    k.put(0x2200, &op32(0xe8, 0x2200, 0x1800));
    k.put(0x1200, &op32(0xe9, 0x1200, 0x1800));
    k.put(0x1300, &NOP5);
    k.put(TRAMPS, &op32(0xe9, TRAMPS, 0x1800));
    k
}

fn check(k: &Kernel, sites: &[PatchSite]) -> Result<(), SiteFinding> {
    check_report(HashAlg::Sha256, sites, &k.report(sites), Some(TEXT))
}

#[test]
fn the_static_call_tables_give_sites_by_kind_and_key_without_init_text() {
    let sites = sample().sites().unwrap();
    let got: Vec<(u64, SiteKind, u64)> = sites
        .iter()
        .map(|s| (s.addr.0, s.kind, s.target.0))
        .collect();
    assert_eq!(
        got,
        [
            (0x1100, SiteKind::Call, KEY_A),
            (0x1200, SiteKind::Tail, KEY_A),
            (0x1300, SiteKind::Call, KEY_B),
            (0x2200, SiteKind::Call, KEY_A),
            (TRAMPS, SiteKind::Trampoline, 0),
        ]
    );
    let (groups, firsts) = site_groups(&sites);
    assert_eq!(groups, [Some(0), Some(1), Some(2), Some(0), Some(3)]);
    assert_eq!(firsts, [0, 1, 2, 4]);
}

#[test]
fn a_static_call_retargeted_whole_within_text_is_legitimate() {
    let mut k = sample();
    let sites = k.sites().unwrap();
    assert_eq!(check(&k, &sites), Ok(()));
    // The key's function changes: every site of key A and the trampoline go to 0x2800.
    k.put(0x1100, &op32(0xe8, 0x1100, 0x2800));
    k.put(0x2200, &op32(0xe8, 0x2200, 0x2800));
    k.put(0x1200, &op32(0xe9, 0x1200, 0x2800));
    k.put(TRAMPS, &op32(0xe9, TRAMPS, 0x2800));
    assert_eq!(check(&k, &sites), Ok(()));
    // No function (NOP, ret), __static_call_return0 (xor) and mid-patch forms.
    k.put(0x1100, &XOR);
    k.put(0x2200, &[0xcc, 0x2e, 0x2e, 0x31, 0xc0]);
    k.put(0x1200, &RET);
    k.put(TRAMPS, &[0xcc; 5]);
    k.put(0x1300, &[0xcc, 0x1f, 0x44, 0x00, 0x00]);
    let r = k.report(&sites);
    use SiteState::*;
    assert_eq!(r.states, [Xor, Ret, Int3Nop, Int3Xor, Int3Ret]);
    assert_eq!(r.targets, [None, None, None, None]);
    assert_eq!(check(&k, &sites), Ok(()));
}

#[test]
fn a_static_call_site_that_leaves_its_group_or_text_is_named() {
    let mut k = sample();
    let sites = k.sites().unwrap();
    // One call of key A goes elsewhere: that site is other, named with its bytes.
    let bad = op32(0xe8, 0x2200, 0x2800);
    k.put(0x2200, &bad);
    let err = check(&k, &sites).unwrap_err();
    assert_eq!(
        err,
        SiteFinding::Disallowed {
            site: sites[3],
            bytes: bad.to_vec()
        }
    );
    assert!(
        err.describe()
            .contains("call to its static call's one target")
    );
    // The whole key outside kernel text.
    let mut k = sample();
    for (at, op) in [(0x1100, 0xe8), (0x2200, 0xe8), (0x1200, 0xe9)] {
        k.put(at, &op32(op, at, 0x5800));
    }
    let err = check(&k, &sites).unwrap_err();
    assert_eq!(
        err,
        SiteFinding::Target {
            site: sites[0],
            target: 0x5800
        }
    );
    assert!(err.describe().contains("outside kernel text"));
    // A call site holding a jump, a trampoline holding a call.
    let mut k = sample();
    k.put(0x1300, &op32(0xe9, 0x1300, 0x1800));
    assert!(matches!(
        check(&k, &sites),
        Err(SiteFinding::Disallowed { .. })
    ));
    let mut k = sample();
    k.put(TRAMPS, &op32(0xe8, TRAMPS, 0x1800));
    assert!(matches!(
        check(&k, &sites),
        Err(SiteFinding::Disallowed { .. })
    ));
}

/// Regression (the test guest under full preemption): `preempt_schedule` went to
/// `preempt_schedule_thunk`, an assembly thunk 8 bytes past a multiple of 16, and a rule that
/// targets be 16-byte aligned named it. Any place in kernel text is a legitimate target.
#[test]
fn regression_a_static_call_to_an_unaligned_thunk_is_legitimate() {
    let mut k = sample();
    let sites = k.sites().unwrap();
    for (at, op) in [(0x1100, 0xe8), (0x2200, 0xe8), (0x1200, 0xe9)] {
        k.put(at, &op32(op, at, 0x1808));
    }
    assert_eq!(check(&k, &sites), Ok(()));
}

#[test]
fn a_live_table_that_regroups_a_site_fails_the_digest() {
    // The guest moves site 0x2200 to key B in its live table and retargets it with B.
    let live = {
        let mut k = Kernel::new(
            &[
                (0x1100, KEY_A),
                (0x2200, KEY_B),
                (0x1200, KEY_A | 1),
                (0x1300, KEY_B),
            ],
            1,
        );
        k.put(0x1100, &op32(0xe8, 0x1100, 0x1800));
        k.put(0x2200, &op32(0xe8, 0x2200, 0x2800));
        k.put(0x1200, &op32(0xe9, 0x1200, 0x1800));
        k.put(0x1300, &op32(0xe8, 0x1300, 0x2800));
        k.put(TRAMPS, &op32(0xe9, TRAMPS, 0x1800));
        k
    };
    let baseline = sample().sites().unwrap();
    let report = live.report(&live.sites().unwrap());
    assert_eq!(
        check_report(HashAlg::Sha256, &baseline, &report, Some(TEXT)),
        Err(SiteFinding::Digest)
    );
    // Without the kernel-code range no static call is legitimate.
    let k = sample();
    assert!(matches!(
        check_report(HashAlg::Sha256, &baseline, &k.report(&baseline), None),
        Err(SiteFinding::Target { .. })
    ));
    // Another number of groups.
    let mut r = k.report(&baseline);
    r.targets.pop();
    assert!(matches!(
        check_report(HashAlg::Sha256, &baseline, &r, Some(TEXT)),
        Err(SiteFinding::Count {
            what: "static-call groups",
            ..
        })
    ));
}

#[test]
fn bad_static_call_tables_are_refused_naming_the_entry() {
    let k = sample();
    let t = usize::try_from(TRAMPS).unwrap();
    let mut text = k.ram[t..t + 8].to_vec();
    let err = parse_trampolines(&text[..4], GuestAddr(TRAMPS), &[TEXT]).unwrap_err();
    assert!(err.to_string().contains("a multiple of 8 bytes"), "{err}");
    text[6] = 0x90;
    let err = parse_trampolines(&text, GuestAddr(TRAMPS), &[TEXT]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "static_call_trampolines entry 0: expected a trampoline ending in 0fb9cc, found \
             {}0f90cc",
            hex::encode(&text[..5])
        )
    );
    let err = parse_sites(&[0u8; 12], GuestAddr(SITES), &[TEXT]).unwrap_err();
    assert!(
        err.to_string().contains("static_call_sites entry 0"),
        "{err}"
    );
    let big = vec![0u8; usize::try_from(MAX_TABLE_BYTES + 8).unwrap()];
    assert!(parse_sites(&big, GuestAddr(SITES), &[TEXT]).is_err());
    // An entry whose site would lie below address 0.
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&i32::MIN.to_le_bytes());
    let err = parse_sites(&e, GuestAddr(0x10), &[TEXT]).unwrap_err();
    assert!(err.to_string().contains("overflowing"), "{err}");
    // A static-call site over a jump label.
    let label = PatchSite {
        addr: GuestAddr(0x1102),
        len: 2,
        target: GuestAddr(0x1180),
        kind: SiteKind::Label,
    };
    let err = merge(vec![label], k.sites().unwrap()).unwrap_err();
    assert!(err.to_string().contains("do not overlap"), "{err}");
}

#[test]
fn static_call_targets_round_trip_in_evidence_and_refuse_bad_flags() {
    let k = sample();
    let sites = k.sites().unwrap();
    let mut e = super::tests::evidence();
    e.kernel_code_sites = Some(SiteEvidence::Whole(k.report(&sites)));
    let bytes = e.encode().unwrap();
    assert_eq!(Evidence::decode(&bytes).unwrap(), e);
    for n in 0..bytes.len() {
        assert!(Evidence::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    // Four groups (A call, A tail, B none, trampoline) sit just before the agent version
    // and key ids.
    let groups = bytes.len() - (1 + 32) - (4 + 5) - (5 + 5 + 1 + 5) - 4;
    assert_eq!(&bytes[groups..groups + 4], &[0, 0, 0, 4]);
    let bad = |at: usize, v: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + v.len()].copy_from_slice(v);
        Evidence::decode(&b).unwrap_err().to_string()
    };
    assert!(bad(groups + 4, &[2]).contains("static-call target flag"));
    assert!(bad(groups, &[0, 0, 0, 6]).contains("static-call groups"));
    // Five states (call, jump, nop, call, jump): packed two to a byte, low nibble first, after
    // the form and the count.
    let packed = groups - 32 - 3;
    assert_eq!(bytes[packed - 5], 2, "the packed form");
    assert_eq!(&bytes[packed..packed + 3], &[0x14, 0x40, 0x01]);
    assert!(bad(packed, &[0x1a]).contains("expected 0 to 9 or 15"));
    assert!(bad(packed + 2, &[0x11]).contains("a zero pad nibble"));
    // Version 2 has no packed form.
    let mut v2 = bytes.clone();
    v2[10..12].copy_from_slice(&2u16.to_be_bytes());
    assert!(
        Evidence::decode(&v2)
            .unwrap_err()
            .to_string()
            .contains("expected 0, 1 or 2")
    );
}

#[test]
fn a_policy_names_its_static_call_tables_by_symbol_and_round_trips() {
    use super::{AttestError, Policy, SystemMap};
    let map = SystemMap::parse(
        "ffffffff81000000 T _text\nffffffff81001000 T _stext\nffffffff81e00010 T \
         __static_call_text_start\nffffffff81e01580 T __static_call_text_end\nffffffff81e01d32 \
         T _etext\nffffffff82451a40 D __start_static_call_sites\nffffffff824599e8 D \
         __stop_static_call_sites\n",
    )
    .unwrap();
    let text = "name = \"k\"\nkernel_load = 0x1000000\n[static_calls]\nsites = \
                [\"__start_static_call_sites\", \"__stop_static_call_sites\"]\ntrampolines = \
                [\"__static_call_text_start\", \"__static_call_text_end\"]\n[[region]]\nname = \
                \"text\"\nsymbols = [\"_stext\", \"_etext\"]\nkernel_code = true\n";
    let p = Policy::parse(text, Some(&map)).unwrap();
    let sc = p.static_calls.unwrap();
    assert_eq!((sc.sites.start.0, sc.sites.len), (0x2451a40, 0x7fa8));
    assert_eq!(
        (sc.trampolines.start.0, sc.trampolines.len),
        (0x1e00010, 0x1570)
    );
    assert_eq!(p.text(), Some((0x1001000, 0x1e02000)));
    let again = Policy::parse(&p.to_toml(), None).unwrap();
    assert_eq!(again, p);
    assert_eq!(again.id(), p.id());
    let mut without = p.clone();
    without.static_calls = None;
    assert_ne!(without.id(), p.id());
    // Static calls need the kernel-code region; tables come in whole entries.
    let field = |t: &str| match Policy::parse(t, Some(&map)).unwrap_err() {
        AttestError::Policy { field, .. } => field,
        e => panic!("{e:?}"),
    };
    assert_eq!(
        field(&text.replace("kernel_code = true", "")),
        "static_calls"
    );
    assert_eq!(
        field(&text.replace("__stop_static_call_sites", "_etext")),
        "static_calls.sites.len"
    );
    assert_eq!(
        field(&text.replace("trampolines = ", "trampolines_start = 1\ntrampolines = ")),
        "static_calls.trampolines"
    );
}
