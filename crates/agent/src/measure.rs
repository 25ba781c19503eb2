//! Measuring a running VM's guest RAM for a challenge: the nonce's sample of each region of
//! a subset, plus the digest of every page of the kernel-code region.
//!
//! The guest's RAM lives in one shared file (`memory-backend-file,share=on`), so a
//! guest-physical address is the file offset. The file is mapped read-only; since the guest
//! may write it meanwhile, each page is copied out (4 KiB, on the stack) before it is hashed,
//! and no slice of it is ever made ([`LiveImage`]).

use std::path::{Path, PathBuf};

use vmattest_core::alg::{Digest, PAGE_SIZE, PageIndex};
use vmattest_core::attest::patch::{self, MAX_SITE_LEN, PatchSite, SiteReport};
use vmattest_core::attest::static_call;
use vmattest_core::attest::{
    GuestAddr, JumpTable, Policy, Region, RegionDigest, SiteEvidence, page_digest, region_digest,
    sample_pages,
};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_image::{ImageError, LiveImage};
use vmattest_qemu::{QmpError, VmSpec};

use crate::guest::{Guest, Layout};

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("subset {subset:?}: not in policy {policy} (it has {known})")]
    UnknownSubset {
        subset: String,
        policy: String,
        known: String,
    },
    #[error("subset {subset}: names region {region}, which the policy does not define")]
    UnknownRegion { subset: String, region: String },
    #[error(
        "region {region} at {start:#x}..{end:#x}: beyond guest RAM of {ram_bytes} bytes ({ram_bytes:#x})"
    )]
    BeyondRam {
        region: String,
        start: u64,
        end: u64,
        ram_bytes: u64,
    },
    #[error("guest RAM")]
    Ram(#[from] ImageError),
    #[error("guest RAM file {path}: empty; is the VM running?")]
    EmptyRam { path: PathBuf },
    #[error("vm {vm}")]
    Qmp {
        vm: String,
        #[source]
        source: QmpError,
    },
    #[error("vm {vm}: status {status}: expected running or paused")]
    Status { vm: String, status: String },
    #[error(transparent)]
    Domain(#[from] vmattest_libvirt::DomainError),
    #[error(transparent)]
    JumpTable(#[from] vmattest_core::attest::AttestError),
}

impl Classify for MeasureError {
    fn class(&self) -> ErrorClass {
        match self {
            MeasureError::UnknownSubset { .. }
            | MeasureError::UnknownRegion { .. }
            | MeasureError::BeyondRam { .. }
            | MeasureError::JumpTable(_) => ErrorClass::Input,
            MeasureError::Ram(e) => e.class(),
            MeasureError::Qmp { source, .. } => source.class(),
            MeasureError::Domain(e) => e.class(),
            MeasureError::EmptyRam { .. } | MeasureError::Status { .. } => ErrorClass::Environment,
        }
    }
}

/// Guest RAM as measuring reads it: bytes are copied out, never borrowed.
pub trait Ram {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies the bytes at `offset` into `buf`; returns how many there were.
    fn copy_at(&self, offset: u64, buf: &mut [u8]) -> usize;
}

/// Bytes that hold still: a rebuilt snapshot, a test's buffer.
impl Ram for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn copy_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        n
    }
}

impl Ram for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn copy_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        self.as_slice().copy_at(offset, buf)
    }
}

/// A running guest's RAM file.
impl Ram for LiveImage {
    fn len(&self) -> u64 {
        LiveImage::len(self)
    }

    fn copy_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        LiveImage::copy_at(self, offset, buf)
    }
}

/// Refuses a region that does not lie within `ram_bytes` of RAM, naming its range.
fn check_range(ram_bytes: u64, region: &Region) -> Result<(), MeasureError> {
    let (start, end) = (region.start.0, region.end());
    let fits = usize::try_from(start).is_ok() && usize::try_from(end).is_ok() && end <= ram_bytes;
    if fits {
        Ok(())
    } else {
        Err(MeasureError::BeyondRam {
            region: region.name.clone(),
            start,
            end,
            ram_bytes,
        })
    }
}

/// The bytes of `region` within `ram`, or an error naming the region, its range and the RAM size.
pub fn region_bytes<'a>(ram: &'a [u8], region: &Region) -> Result<&'a [u8], MeasureError> {
    check_range(ram.len() as u64, region)?;
    let (s, e) = (region.start.0, region.end());
    Ok(&ram[usize::try_from(s).unwrap_or(0)..usize::try_from(e).unwrap_or(0)])
}

/// Copies page `i` of `region` out of `ram` into `buf`; returns how many bytes there were
/// (none for a page beyond the region).
pub(crate) fn copy_page<R: Ram + ?Sized>(
    ram: &R,
    region: &Region,
    i: PageIndex,
    buf: &mut [u8; PAGE_SIZE],
) -> usize {
    if i.0 < region.pages {
        ram.copy_at(region.page_addr(i), buf)
    } else {
        0
    }
}

/// Digests of the given pages (indices relative to the region) of a region of `ram`, each
/// copied out first, with the bytes of patch sites zeroed.
pub(crate) fn page_digests<R: Ram + ?Sized>(
    policy: &Policy,
    ram: &R,
    region: &Region,
    pages: &[PageIndex],
    sites: &[PatchSite],
) -> Vec<(PageIndex, Digest)> {
    let mut buf = [0u8; PAGE_SIZE];
    pages
        .iter()
        .map(|&i| {
            let n = copy_page(ram, region, i, &mut buf);
            patch::mask_page(&mut buf[..n], region.page_addr(i), sites);
            (i, page_digest(policy.alg, &buf[..n]))
        })
        .collect()
}

/// What one challenge measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    pub regions: Vec<RegionDigest>,
    pub kernel_code: Option<Digest>,
    pub kernel_code_sites: Option<SiteEvidence>,
}

/// The patch sites of every region of `policy`, from the guest's own jump table and
/// static-call tables. Tables that do not parse give no sites: the pages are then hashed
/// whole and the reports are empty, which the server refuses against its baseline's sites.
pub fn live_sites<R: Ram + ?Sized>(ram: &R, policy: &Policy) -> Vec<PatchSite> {
    for gap in reread_gaps() {
        if let Ok(sites) = table_sites(ram, policy) {
            return sites;
        }
        std::thread::sleep(gap);
    }
    table_sites(ram, policy).unwrap_or_default()
}

/// How often, and how far apart, a site caught in an unexpected state is read again: the
/// kernel finishes a patch within microseconds, while a changed site stays as it is.
/// 2, 4, ... 1024 ms (about 2 s in all): a jump label is patched within microseconds, but the
/// kernel retargets a static call one site at a time, and under emulation (TCG) a call of 450
/// sites takes hundreds of milliseconds, during which its sites hold two targets.
fn reread_gaps() -> impl Iterator<Item = std::time::Duration> {
    (1..=10).map(|k| std::time::Duration::from_millis(1 << k))
}

/// The bytes of a kernel table named `what`.
fn table_bytes<R: Ram + ?Sized>(
    ram: &R,
    what: &str,
    table: JumpTable,
) -> Result<Vec<u8>, MeasureError> {
    let beyond = || MeasureError::BeyondRam {
        region: what.into(),
        start: table.start.0,
        end: table.start.0.saturating_add(table.len),
        ram_bytes: ram.len(),
    };
    let len = usize::try_from(table.len).map_err(|_| beyond())?;
    let mut bytes = vec![0u8; len];
    if ram.copy_at(table.start.0, &mut bytes) != len {
        return Err(beyond());
    }
    Ok(bytes)
}

/// The patch sites of every region of `policy` (none without tables), or why its tables
/// give none.
pub fn table_sites<R: Ram + ?Sized>(
    ram: &R,
    policy: &Policy,
) -> Result<Vec<PatchSite>, MeasureError> {
    let ranges: Vec<(u64, u64)> = policy
        .regions
        .iter()
        .map(|r| (r.start.0, r.end()))
        .collect();
    let read = |at: GuestAddr| {
        let mut b = [0u8; MAX_SITE_LEN];
        ram.copy_at(at.0, &mut b);
        b
    };
    let labels = match policy.jump_table {
        Some(t) => {
            patch::parse_jump_table(&table_bytes(ram, "jump_table", t)?, t.start, &ranges, &read)?
        }
        None => Vec::new(),
    };
    let Some(sc) = policy.static_calls else {
        return Ok(labels);
    };
    let sites = static_call::parse_sites(
        &table_bytes(ram, "static_calls.sites", sc.sites)?,
        sc.sites.start,
        &ranges,
    )?;
    let trampolines = static_call::parse_trampolines(
        &table_bytes(ram, "static_calls.trampolines", sc.trampolines)?,
        sc.trampolines.start,
        &ranges,
    )?;
    Ok(static_call::merge(
        static_call::merge(labels, sites)?,
        trampolines,
    )?)
}

/// The report of the sites of `pages` of `region`.
fn site_report<R: Ram + ?Sized>(
    policy: &Policy,
    ram: &R,
    region: &Region,
    pages: &[PageIndex],
    sites: &[PatchSite],
) -> SiteReport {
    let covered = patch::sites_of_pages(sites, region.start, region.pages, pages);
    let read = |s: &PatchSite| {
        let mut b = vec![0u8; usize::from(s.len)];
        let n = ram.copy_at(s.addr.0, &mut b);
        b.truncate(n);
        b
    };
    let mut bytes: Vec<Vec<u8>> = covered.iter().map(read).collect();
    let mut report = patch::report(policy.alg, &covered, &bytes);
    // A report that the server would refuse, or that caught the kernel patching (an INT3 in
    // a site, whose tail may be read half written), is read again whole: the rare case. A
    // static call caught while the kernel retargets it has sites of both targets, and which of
    // them reads as other depends on the order.
    let settled = |r: &SiteReport| {
        !r.states.iter().any(|s| s.mid_patch())
            && patch::check_report(policy.alg, &covered, r, policy.text()).is_ok()
    };
    for gap in reread_gaps() {
        if settled(&report) {
            break;
        }
        std::thread::sleep(gap);
        bytes = covered.iter().map(read).collect();
        report = patch::report(policy.alg, &covered, &bytes);
    }
    report
}

/// Measures the regions of subset `subset_id` (in subset order) from the nonce's page sample,
/// and the kernel-code region (if the policy has one) over all of its pages. With a jump table
/// in the policy, patch sites are masked out of the page digests and reported on their own.
pub fn measure<R: Ram + ?Sized>(
    ram: &R,
    policy: &Policy,
    subset_id: &str,
    nonce: &[u8],
) -> Result<Measurement, MeasureError> {
    let subset = policy
        .subset(subset_id)
        .ok_or_else(|| MeasureError::UnknownSubset {
            subset: subset_id.to_owned(),
            policy: policy.name.clone(),
            known: policy
                .subsets
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    // Check every range before hashing anything.
    let mut regions = Vec::with_capacity(subset.regions.len());
    for name in &subset.regions {
        let region = policy
            .region(name)
            .ok_or_else(|| MeasureError::UnknownRegion {
                subset: subset.id.clone(),
                region: name.clone(),
            })?;
        check_range(ram.len(), region)?;
        regions.push(region);
    }
    let kernel = policy.regions.iter().find(|r| r.kernel_code);
    if let Some(r) = kernel {
        check_range(ram.len(), r)?;
    }
    let sites = policy.has_sites().then(|| live_sites(ram, policy));
    let sites = sites.as_deref();
    let mut out = Vec::with_capacity(regions.len());
    for region in regions {
        let sample = sample_pages(nonce, region);
        let pages = page_digests(policy, ram, region, &sample, sites.unwrap_or(&[]));
        out.push(RegionDigest {
            name: region.name.clone(),
            pages: pages.len() as u64,
            digest: region_digest(policy.alg, &region.name, &pages),
            sites: sites.map(|s| SiteEvidence::Whole(site_report(policy, ram, region, &sample, s))),
        });
    }
    // When the subset already hashed every page of the kernel-code region, that digest is it.
    let (kernel_code, kernel_code_sites) = match kernel {
        None => (None, None),
        Some(region) => match out
            .iter()
            .find(|d| d.name == region.name && d.pages == region.pages)
        {
            // Its site report is that region's too: not sent twice.
            Some(d) => (Some(d.digest), None),
            None => {
                let all: Vec<PageIndex> = (0..region.pages).map(PageIndex).collect();
                let pages = page_digests(policy, ram, region, &all, sites.unwrap_or(&[]));
                (
                    Some(region_digest(policy.alg, &region.name, &pages)),
                    sites.map(|s| SiteEvidence::Whole(site_report(policy, ram, region, &all, s))),
                )
            }
        },
    };
    Ok(Measurement {
        regions: out,
        kernel_code,
        kernel_code_sites,
    })
}

/// Maps a guest RAM file read-only, for copying pages out while the guest runs.
pub fn map_ram(path: &Path) -> Result<LiveImage, MeasureError> {
    let image = LiveImage::open(path)?;
    if image.is_empty() {
        return Err(MeasureError::EmptyRam {
            path: path.to_path_buf(),
        });
    }
    Ok(image)
}

/// Proof that a VM's guest is paused: only [`Guest::with_paused`] makes one, for the duration
/// of its closure. While it lives the guest writes nothing, so its files may be read as slices.
#[derive(Debug)]
pub struct Paused {
    layout: Layout,
}

impl Paused {
    pub(crate) fn new(layout: Layout) -> Paused {
        Paused { layout }
    }

    /// For a VM whose QEMU is not running at all (its files are then only ours to change).
    pub fn if_stopped(spec: &VmSpec) -> Option<Paused> {
        vmattest_qemu::vm::live_pid(spec)
            .is_none()
            .then(|| Paused::new(Layout::of_spec(spec)))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// Measures the running guest; with `pause`, the guest is paused while it is read, so that
/// the digests are of one instant.
pub fn measure_vm(
    guest: &Guest<'_>,
    policy: &Policy,
    subset_id: &str,
    nonce: &[u8],
    pause: bool,
) -> Result<Measurement, MeasureError> {
    if pause {
        guest.with_paused(|paused| {
            measure(&map_ram(&paused.layout().ram)?, policy, subset_id, nonce)
        })?
    } else {
        measure(&map_ram(&guest.layout()?.ram)?, policy, subset_id, nonce)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use sha2::{Digest as _, Sha256};
    use vmattest_core::attest::SiteState;

    const POLICY: &str = r#"
name = "t"
hash = "sha256"
schedule_secs = 5

[[region]]
name = "text"
start = 0x2000
len = 0x3000
kernel_code = true
critical = true

[[region]]
name = "data"
start = 0x8000
len = 0x8000
sample = 3

[[subset]]
id = "d"
regions = ["data"]
"#;

    fn ram() -> Vec<u8> {
        (0..64 * PAGE_SIZE)
            .map(|i| u8::try_from((i / PAGE_SIZE * 7 + i) % 251).unwrap())
            .collect()
    }

    /// The region digest computed from the specification, with sha2 directly.
    fn oracle(name: &str, ram: &[u8], start: usize, pages: &[u64]) -> Vec<u8> {
        let mut buf = b"vmattest region-digest v1\0".to_vec();
        buf.extend_from_slice(&(name.len() as u64).to_be_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(pages.len() as u64).to_be_bytes());
        for &p in pages {
            let at = start + usize::try_from(p).unwrap() * PAGE_SIZE;
            buf.extend_from_slice(&p.to_be_bytes());
            buf.extend_from_slice(&Sha256::digest(&ram[at..at + PAGE_SIZE]));
        }
        Sha256::digest(&buf).to_vec()
    }

    #[test]
    fn full_and_sampled_regions_match_an_independent_computation() {
        let policy = Policy::parse(POLICY, None).unwrap();
        let ram = ram();
        let nonce = [9u8; 32];
        let m = measure(ram.as_slice(), &policy, "all", &nonce).unwrap();
        let (regions, kernel) = (m.regions, m.kernel_code);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].name, "text");
        assert_eq!(regions[0].pages, 3);
        assert_eq!(
            regions[0].digest.as_bytes(),
            oracle("text", &ram, 0x2000, &[0, 1, 2])
        );
        let sample: Vec<u64> = sample_pages(&nonce, policy.region("data").unwrap())
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(sample.len(), 3);
        assert_eq!(regions[1].pages, 3);
        assert_eq!(
            regions[1].digest.as_bytes(),
            oracle("data", &ram, 0x8000, &sample)
        );
        assert_eq!(
            kernel.unwrap().as_bytes(),
            oracle("text", &ram, 0x2000, &[0, 1, 2])
        );
    }

    #[test]
    fn kernel_code_is_reported_for_a_subset_without_it() {
        let policy = Policy::parse(POLICY, None).unwrap();
        let ram = ram();
        let m = measure(ram.as_slice(), &policy, "d", &[1u8; 16]).unwrap();
        let (regions, kernel) = (m.regions, m.kernel_code);
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].name, "data");
        assert_eq!(
            kernel.unwrap().as_bytes(),
            oracle("text", &ram, 0x2000, &[0, 1, 2])
        );
    }

    #[test]
    fn the_sample_depends_on_the_nonce() {
        let policy = Policy::parse(POLICY, None).unwrap();
        let ram = ram();
        let digests: Vec<Digest> = (0u8..8)
            .map(|n| {
                measure(ram.as_slice(), &policy, "d", &[n; 16])
                    .unwrap()
                    .regions[0]
                    .digest
            })
            .collect();
        assert!(
            digests.iter().skip(1).any(|d| d != &digests[0]),
            "eight nonces all gave the same sample"
        );
        // The same nonce gives the same digest.
        assert_eq!(
            measure(ram.as_slice(), &policy, "d", &[3; 16])
                .unwrap()
                .regions[0]
                .digest,
            digests[3]
        );
    }

    #[test]
    fn a_region_beyond_ram_is_an_error_naming_it() {
        let policy = Policy::parse(POLICY, None).unwrap();
        let ram = vec![0u8; 0xa000];
        let e = measure(ram.as_slice(), &policy, "d", &[0; 16])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("region data") && e.contains("0x8000") && e.contains("40960"),
            "{e}"
        );
        let e = measure(ram.as_slice(), &policy, "nope", &[0; 16])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("all"), "{e}");
    }

    #[test]
    fn a_file_backed_ram_image_measures_like_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        let ram = ram();
        std::fs::write(&path, &ram).unwrap();
        let image = LiveImage::open(&path).unwrap();
        let policy = Policy::parse(POLICY, None).unwrap();
        let nonce = [5u8; 20];
        assert_eq!(
            measure(&image, &policy, "all", &nonce).unwrap(),
            measure(ram.as_slice(), &policy, "all", &nonce).unwrap()
        );
    }

    /// RAM in which the kernel is retargeting a static call: the first reads of its one site
    /// give an INT3 and a half-written tail.
    struct Retargeting {
        ram: Vec<u8>,
        torn: std::cell::Cell<u32>,
    }

    const CALL_SITE: u64 = 0x2100;

    impl Ram for Retargeting {
        fn len(&self) -> u64 {
            self.ram.len() as u64
        }

        fn copy_at(&self, offset: u64, buf: &mut [u8]) -> usize {
            let n = self.ram.copy_at(offset, buf);
            if offset == CALL_SITE && buf.len() == 5 && self.torn.get() > 0 {
                self.torn.set(self.torn.get() - 1);
                buf.copy_from_slice(&[0xcc, 0x03, 0x0f, 0x00, 0x00]);
            }
            n
        }
    }

    /// A site read while the kernel writes its tail holds an INT3 and any target: the agent
    /// reads such a report again rather than send a target the kernel never wrote.
    #[test]
    fn a_static_call_read_half_written_is_read_again() {
        let policy = Policy::parse(
            "name = \"k\"\n[static_calls]\nsites_start = 0x8000\nsites_len = 8\n\
             trampolines_start = 0x4f00\ntrampolines_len = 8\n[[region]]\nname = \"text\"\n\
             start = 0x2000\nlen = 0x3000\nkernel_code = true\n",
            None,
        )
        .unwrap();
        let mut ram = vec![0u8; 0x10000];
        // One call site at 0x2100 of the key at 0x9000, calling 0x3000; its trampoline too.
        let rel = |to: u64, from: u64| {
            i32::try_from(i64::try_from(to).unwrap() - i64::try_from(from).unwrap()).unwrap()
        };
        ram[0x8000..0x8004].copy_from_slice(&rel(CALL_SITE, 0x8000).to_le_bytes());
        ram[0x8004..0x8008].copy_from_slice(&rel(0x9000, 0x8004).to_le_bytes());
        ram[0x2100] = 0xe8;
        ram[0x2101..0x2105].copy_from_slice(&rel(0x3000, 0x2105).to_le_bytes());
        ram[0x4f00] = 0xe9;
        ram[0x4f01..0x4f05].copy_from_slice(&rel(0x3000, 0x4f05).to_le_bytes());
        ram[0x4f05..0x4f08].copy_from_slice(&[0x0f, 0xb9, 0xcc]);
        let guest = Retargeting {
            ram,
            torn: std::cell::Cell::new(2),
        };
        let m = measure(&guest, &policy, "all", &[1u8; 16]).unwrap();
        assert_eq!(guest.torn.get(), 0, "the torn reads were made");
        let report = m.regions[0].sites.clone().unwrap();
        let report = report.whole().unwrap();
        assert_eq!(report.states, [SiteState::Call, SiteState::Jump]);
        let sites = table_sites(guest.ram.as_slice(), &policy).unwrap();
        assert_eq!(
            patch::check_report(policy.alg, &sites, report, policy.text()),
            Ok(())
        );
    }
}
