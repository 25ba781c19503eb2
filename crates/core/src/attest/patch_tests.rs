#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::GuestAddr;
use super::evidence::{Evidence, SiteEvidence};
use super::patch::*;
use crate::alg::{HashAlg, PageIndex};
use crate::record::Signable;

/// A fake kernel: RAM with a jump table at 0x3000 whose entries point into text at 0x1000.
struct Kernel {
    ram: Vec<u8>,
    table: (u64, u64),
}

const TABLE: u64 = 0x3000;

/// `(code, target, bytes)` per site; entries are written relative to their own fields.
fn kernel(sites: &[(u64, u64, &[u8])]) -> Kernel {
    let mut ram = vec![0x90u8; 0x4000];
    for (i, (code, target, bytes)) in sites.iter().enumerate() {
        let e = TABLE + 16 * i as u64;
        let rel = |to: u64, from: u64| i64::try_from(to).unwrap() - i64::try_from(from).unwrap();
        let at = usize::try_from(e).unwrap();
        ram[at..at + 4].copy_from_slice(&i32::try_from(rel(*code, e)).unwrap().to_le_bytes());
        ram[at + 4..at + 8]
            .copy_from_slice(&i32::try_from(rel(*target, e + 4)).unwrap().to_le_bytes());
        let c = usize::try_from(*code).unwrap();
        ram[c..c + bytes.len()].copy_from_slice(bytes);
    }
    Kernel {
        ram,
        table: (TABLE, 16 * sites.len() as u64),
    }
}

impl Kernel {
    fn sites(&self) -> Result<Vec<PatchSite>, super::AttestError> {
        let (s, n) = self.table;
        let table = &self.ram[usize::try_from(s).unwrap()..usize::try_from(s + n).unwrap()];
        let read = |a: GuestAddr| {
            let mut b = [0u8; MAX_SITE_LEN];
            let at = usize::try_from(a.0).unwrap();
            b.copy_from_slice(&self.ram[at..at + MAX_SITE_LEN]);
            b
        };
        parse_jump_table(table, GuestAddr(s), &[(0x1000, 0x3000)], &read)
    }

    fn bytes(&self, s: &PatchSite) -> Vec<u8> {
        let at = usize::try_from(s.addr.0).unwrap();
        self.ram[at..at + usize::from(s.len)].to_vec()
    }

    fn report(&self, sites: &[PatchSite]) -> SiteReport {
        let read: Vec<Vec<u8>> = sites.iter().map(|s| self.bytes(s)).collect();
        report(HashAlg::Sha256, sites, &read)
    }
}

const NOP5: &[u8] = &[0x0f, 0x1f, 0x44, 0x00, 0x00];

/// jmp rel32 from `at` (5 bytes) to `to`.
fn jmp32(at: u64, to: u64) -> Vec<u8> {
    let rel = i32::try_from(i64::try_from(to).unwrap() - i64::try_from(at + 5).unwrap()).unwrap();
    let mut v = vec![0xe9];
    v.extend_from_slice(&rel.to_le_bytes());
    v
}

fn sample() -> Kernel {
    kernel(&[
        (0x1ffe, 0x1200, NOP5),          // straddles the pages at 0x1000 and 0x2000
        (0x1100, 0x1180, &[0xeb, 0x7e]), // jmp8 to 0x1180
        (0x2100, 0x2400, &jmp32(0x2100, 0x2400)),
        (0x2200, 0x2210, &[0x66, 0x90]), // nop2
        (0x0800, 0x0900, NOP5),          // outside the ranges: skipped
        (0x0ffc, 0x0f00, &[0x66, 0x90]), // ends just before the ranges: skipped
    ])
}

#[test]
fn the_jump_table_gives_every_site_with_its_length_and_target() {
    let sites = sample().sites().unwrap();
    let got: Vec<(u64, u8, u64)> = sites
        .iter()
        .map(|s| (s.addr.0, s.len, s.target.0))
        .collect();
    assert_eq!(
        got,
        [
            (0x1100, 2, 0x1180),
            (0x1ffe, 5, 0x1200),
            (0x2100, 5, 0x2400),
            (0x2200, 2, 0x2210)
        ]
    );
}

#[test]
fn legitimate_encodings_classify_and_anything_else_is_other() {
    let k = sample();
    let sites = k.sites().unwrap();
    let states: Vec<SiteState> = sites.iter().map(|s| s.classify(&k.bytes(s))).collect();
    assert_eq!(
        states,
        [
            SiteState::Jump,
            SiteState::Nop,
            SiteState::Jump,
            SiteState::Nop
        ]
    );
    let s = sites[2];
    let mut mid = jmp32(0x2100, 0x2400);
    mid[0] = 0xcc;
    assert_eq!(s.classify(&mid), SiteState::Int3Jump);
    let mut mid = NOP5.to_vec();
    mid[0] = 0xcc;
    assert_eq!(s.classify(&mid), SiteState::Int3Nop);
    // A jump elsewhere, a nop of the other length and a short read are not allowed.
    assert_eq!(s.classify(&jmp32(0x2100, 0x2500)), SiteState::Other);
    assert_eq!(
        s.classify(&[0x66, 0x90, 0x0f, 0x1f, 0x00]),
        SiteState::Other
    );
    assert_eq!(s.classify(&NOP5[..4]), SiteState::Other);
}

#[test]
fn masking_zeroes_site_bytes_in_each_page_a_site_touches() {
    let k = sample();
    let sites = k.sites().unwrap();
    let mut first = k.ram[0x1000..0x2000].to_vec();
    mask_page(&mut first, 0x1000, &sites);
    assert_eq!(&first[0x100..0x102], &[0, 0]);
    assert_eq!(&first[0xffe..], &[0, 0]);
    assert_eq!(first[0xffd], 0x90);
    let mut second = k.ram[0x2000..0x3000].to_vec();
    mask_page(&mut second, 0x2000, &sites);
    assert_eq!(&second[..3], &[0, 0, 0]);
    assert_eq!(second[3], 0x90);
    // The straddling site counts for both pages, once for the two.
    let both = sites_of_pages(&sites, GuestAddr(0x1000), 2, &[PageIndex(0), PageIndex(1)]);
    assert_eq!(both.len(), 4);
    let second_only = sites_of_pages(&sites, GuestAddr(0x1000), 3, &[PageIndex(1)]);
    assert_eq!(second_only.len(), 3);
    assert_eq!(second_only[0].addr, GuestAddr(0x1ffe));
}

#[test]
fn a_report_checks_against_the_baseline_sites_and_names_a_bad_one() {
    let k = sample();
    let sites = k.sites().unwrap();
    let r = k.report(&sites);
    assert_eq!(check_report(HashAlg::Sha256, &sites, &r, None), Ok(()));
    // A site flipped to its other encoding is still fine.
    let mut flipped = kernel(&[
        (0x1ffe, 0x1200, &jmp32(0x1ffe, 0x1200)),
        (0x1100, 0x1180, &[0x66, 0x90]),
        (0x2100, 0x2400, NOP5),
        (0x2200, 0x2210, &[0xeb, 0x0e]),
    ]);
    let r = flipped.report(&sites);
    assert_eq!(check_report(HashAlg::Sha256, &sites, &r, None), Ok(()));
    // A jump to a target the table does not give is named with its bytes.
    let evil = jmp32(0x2100, 0x2800);
    flipped.ram[0x2100..0x2105].copy_from_slice(&evil);
    let r = flipped.report(&sites);
    match check_report(HashAlg::Sha256, &sites, &r, None) {
        Err(SiteFinding::Disallowed { site, bytes }) => {
            assert_eq!(site.addr, GuestAddr(0x2100));
            assert_eq!(bytes, evil);
        }
        other => panic!("{other:?}"),
    }
    // A guest whose table was changed to allow the new target: states fit, the digest does not.
    let mut moved = sites.clone();
    moved[2].target = GuestAddr(0x2800);
    let r = flipped.report(&moved);
    assert_eq!(
        check_report(HashAlg::Sha256, &sites, &r, None),
        Err(SiteFinding::Digest)
    );
    // A site fewer is a count mismatch.
    let r = k.report(&sites[1..]);
    assert_eq!(
        check_report(HashAlg::Sha256, &sites, &r, None),
        Err(SiteFinding::Count {
            what: "patch sites",
            expected: 4,
            found: 3
        })
    );
}

/// Regression (a 600-round run): a site read while the kernel patched it, an INT3 followed by
/// the tail of the jump it was becoming, made the whole table unreadable.
#[test]
fn regression_a_site_caught_mid_patch_keeps_its_length() {
    let mut mid = jmp32(0x1100, 0x1180);
    mid[0] = 0xcc;
    let k = kernel(&[(0x1100, 0x1180, &mid), (0x1200, 0x1280, &[0xcc, 0x7e])]);
    let sites = k.sites().unwrap();
    assert_eq!((sites[0].len, sites[1].len), (5, 2));
    assert_eq!(sites[0].classify(&k.bytes(&sites[0])), SiteState::Int3Jump);
    assert_eq!(sites[1].classify(&k.bytes(&sites[1])), SiteState::Int3Jump);
}

#[test]
fn a_bad_jump_table_is_refused_naming_the_entry() {
    // A site that holds neither a jump nor a nop.
    let k = kernel(&[
        (0x1100, 0x1180, NOP5),
        (0x1200, 0x1300, &[0x48, 0x89, 0xe5]),
    ]);
    let e = k.sites().unwrap_err().to_string();
    assert!(
        e.contains("entry 1") && e.contains("0x1200") && e.contains("4889e5"),
        "{e}"
    );
    // Overlapping sites.
    let k = kernel(&[
        (0x1100, 0x1180, &jmp32(0x1100, 0x1180)),
        (0x1103, 0x1300, &[0x66, 0x90]),
    ]);
    assert!(k.sites().unwrap_err().to_string().contains("overlap"));
    // A table that is not whole entries, or too large.
    let read = |_: GuestAddr| [0u8; MAX_SITE_LEN];
    assert!(parse_jump_table(&[0; 17], GuestAddr(0), &[(0, 1)], &read).is_err());
    // An entry pointing below address 0.
    let mut t = [0u8; 16];
    t[..4].copy_from_slice(&(-64i32).to_le_bytes());
    let e = parse_jump_table(&t, GuestAddr(0x10), &[(0, u64::MAX)], &read).unwrap_err();
    assert!(e.to_string().contains("entry 0"), "{e}");
}

#[test]
fn site_reports_round_trip_in_evidence_and_refuse_bad_runs() {
    let k = sample();
    let sites = k.sites().unwrap();
    let mut e = super::tests::evidence();
    // 40 sites of which two jump: the exceptions form is the smaller.
    let mut r = k.report(&sites);
    r.states.resize(40, SiteState::Nop);
    e.kernel_code_sites = Some(SiteEvidence::Whole(r));
    let bytes = e.encode().unwrap();
    assert_eq!(Evidence::decode(&bytes).unwrap(), e);
    for n in 0..bytes.len() {
        assert!(Evidence::decode(&bytes[..n]).is_err(), "prefix {n}");
    }
    // The report sits before the agent version and key ids; its two exceptions (sites 0 and
    // 2 jump) before its digest and its (empty) static-call groups. Each corruption is refused.
    let ex = bytes.len() - (1 + 32) - (4 + 5) - 4 - 32 - 2 * 5;
    assert_eq!(&bytes[ex..ex + 5], &[0, 0, 0, 0, 1]);
    let bad = |at: usize, v: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + v.len()].copy_from_slice(v);
        Evidence::decode(&b).unwrap_err().to_string()
    };
    assert!(bad(ex + 5, &[0, 0, 0, 0]).contains("increasing"));
    assert!(bad(ex + 4, &[0]).contains("expected 1 to 9 or 255"));
    assert!(bad(ex - 8, &[0, 0, 0, 2]).contains("below the count"));
    assert!(bad(ex - 8, &[0x7f, 0, 0, 0]).contains("at most 2^20"));
    assert!(bad(ex - 4, &[0, 0, 0, 41]).contains("exceptions"));
    assert!(bad(ex - 9, &[4]).contains("expected 0 to 3"));
}
