//! Naming where a region differs from its baseline: which pages (from per-page digests) and,
//! within a page, which bytes (from the baseline's own bytes). Patch sites are left out on
//! both sides: their states are judged by the site report.

use crate::alg::{Digest, PAGE_SIZE, PageIndex};

use super::Region;
use super::patch::{PatchSite, mask_page};

/// Largest region whose bytes a baseline keeps (a kernel's text is a few tens of MiB).
pub const MAX_KEPT_REGION_BYTES: u64 = 256 << 20;
/// The length of the bytes a baseline keeps of `region` (whole pages from its start), or
/// `None` for a region over [`MAX_KEPT_REGION_BYTES`].
pub fn kept_len(region: &Region) -> Option<u64> {
    region
        .pages
        .checked_mul(PAGE_SIZE as u64)
        .filter(|n| *n <= MAX_KEPT_REGION_BYTES)
}

/// Pages named per region and exchange: enough to show an attack, small enough to ship.
pub const MAX_LOCATED_PAGES: usize = 16;
/// Runs of differing bytes named per page; the rest are counted.
const MAX_RUNS: usize = 4;
/// Bytes of a run shown; longer runs give their length.
const SHOWN: usize = 16;

/// Bytes `[offset, offset + got.len())` of a page that differ from the baseline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteRun {
    pub offset: usize,
    pub got: Vec<u8>,
    pub want: Vec<u8>,
}

/// The first [`MAX_LOCATED_PAGES`] pages whose digest in `got` differs from `want`; a page
/// missing on either side differs.
pub fn differing_pages(got: &[Digest], want: &[Digest]) -> Vec<PageIndex> {
    (0..got.len().max(want.len()))
        .filter(|&i| match (got.get(i), want.get(i)) {
            (Some(g), Some(w)) => !g.ct_eq(w),
            _ => true,
        })
        .take(MAX_LOCATED_PAGES)
        .map(|i| PageIndex(i as u64))
        .collect()
}

/// The runs of bytes where page `got` (read at `page_addr`) differs from `want`, with the
/// bytes of `sites` zeroed on both sides. A length difference is one run at the shorter end.
pub fn diff_page(page_addr: u64, got: &[u8], want: &[u8], sites: &[PatchSite]) -> Vec<ByteRun> {
    let n = got.len().min(want.len()).min(PAGE_SIZE);
    let (mut g, mut w) = ([0u8; PAGE_SIZE], [0u8; PAGE_SIZE]);
    g[..n].copy_from_slice(&got[..n]);
    w[..n].copy_from_slice(&want[..n]);
    mask_page(&mut g[..n], page_addr, sites);
    mask_page(&mut w[..n], page_addr, sites);
    let mut runs = Vec::new();
    let mut i = 0;
    while i < n {
        if g[i] == w[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && g[i] != w[i] {
            i += 1;
        }
        runs.push(ByteRun {
            offset: start,
            got: got[start..i].to_vec(),
            want: want[start..i].to_vec(),
        });
    }
    let (glen, wlen) = (got.len().min(PAGE_SIZE), want.len().min(PAGE_SIZE));
    if glen != wlen {
        runs.push(ByteRun {
            offset: n,
            got: got[n..glen].to_vec(),
            want: want[n..wlen].to_vec(),
        });
    }
    runs
}

fn shown(bytes: &[u8]) -> String {
    if bytes.len() <= SHOWN {
        hex::encode(bytes)
    } else {
        format!("{}.. ({} bytes)", hex::encode(&bytes[..SHOWN]), bytes.len())
    }
}

/// One line for a page: `page 12 offset 0x3a5: holds 90, baseline cc; ...`.
pub fn describe(page: PageIndex, runs: &[ByteRun]) -> String {
    if runs.is_empty() {
        return format!("page {page} matches the baseline when read again");
    }
    let mut parts: Vec<String> = runs
        .iter()
        .take(MAX_RUNS)
        .map(|r| {
            format!(
                "offset {:#x}: holds {}, baseline {}",
                r.offset,
                shown(&r.got),
                shown(&r.want)
            )
        })
        .collect();
    if runs.len() > MAX_RUNS {
        let bytes: usize = runs[MAX_RUNS..].iter().map(|r| r.got.len()).sum();
        parts.push(format!(
            "and {} more runs ({bytes} bytes)",
            runs.len() - MAX_RUNS
        ));
    }
    format!("page {page} {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::alg::HashAlg;
    use crate::attest::{GuestAddr, page_digest};

    fn site(addr: u64) -> PatchSite {
        PatchSite {
            addr: GuestAddr(addr),
            len: 5,
            target: GuestAddr(addr + 0x40),
            kind: crate::attest::SiteKind::Label,
        }
    }

    #[test]
    fn one_changed_byte_is_named_by_offset_with_both_values() {
        let want = vec![0xccu8; PAGE_SIZE];
        let mut got = want.clone();
        got[0x3a5] = 0x90;
        let runs = diff_page(0x1000, &got, &want, &[]);
        assert_eq!(
            runs,
            vec![ByteRun {
                offset: 0x3a5,
                got: vec![0x90],
                want: vec![0xcc]
            }]
        );
        assert_eq!(
            describe(PageIndex(12), &runs),
            "page 12 offset 0x3a5: holds 90, baseline cc"
        );
    }

    #[test]
    fn bytes_of_patch_sites_are_not_differences() {
        let want = vec![0u8; PAGE_SIZE];
        let mut got = want.clone();
        got[0x10..0x15].copy_from_slice(&[0xe9, 1, 2, 3, 4]);
        // The site straddles into this page from the one before.
        got[0] = 0x44;
        let sites = [site(0x1000 - 4), site(0x1010)];
        assert!(diff_page(0x1000, &got, &want, &sites).is_empty());
        assert_eq!(diff_page(0x1000, &got, &want, &[]).len(), 2);
    }

    #[test]
    fn long_and_many_runs_are_summarised() {
        let want = vec![0u8; PAGE_SIZE];
        let mut got = want.clone();
        got[..40].fill(1);
        for k in 0..6 {
            got[100 + k * 10] = 2;
        }
        let runs = diff_page(0, &got, &want, &[]);
        assert_eq!(runs.len(), 7);
        let text = describe(PageIndex(0), &runs);
        assert!(text.contains("holds 01010101010101010101010101010101.. (40 bytes)"));
        assert!(text.ends_with("and 3 more runs (3 bytes)"), "{text}");
    }

    #[test]
    fn a_shorter_page_is_one_run_at_its_end() {
        let want = vec![7u8; 100];
        let got = vec![7u8; 96];
        let runs = diff_page(0, &got, &want, &[]);
        assert_eq!(runs[0].offset, 96);
        assert_eq!(runs[0].want, vec![7u8; 4]);
    }

    #[test]
    fn only_differing_pages_are_located_and_at_most_sixteen() {
        let d = |b: u8| page_digest(HashAlg::Sha256, &[b]);
        let want: Vec<Digest> = (0..40).map(|_| d(0)).collect();
        let mut got = want.clone();
        got[3] = d(1);
        assert_eq!(differing_pages(&got, &want), vec![PageIndex(3)]);
        got.truncate(39);
        assert_eq!(
            differing_pages(&got, &want),
            vec![PageIndex(3), PageIndex(39)]
        );
        let all: Vec<Digest> = (0..40).map(|_| d(9)).collect();
        assert_eq!(differing_pages(&all, &want).len(), MAX_LOCATED_PAGES);
        assert!(differing_pages(&want, &want).is_empty());
    }
}
