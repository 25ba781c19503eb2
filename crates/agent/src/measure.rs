//! Measuring a running VM's guest RAM for a challenge: the nonce's sample of each region of
//! a subset, plus the digest of every page of the kernel-code region.
//!
//! The guest's RAM lives in one shared file (`memory-backend-file,share=on`), so a
//! guest-physical address is the file offset. The file is mapped read-only and never copied.

use std::path::PathBuf;

use vmattest_core::alg::{Digest, PAGE_SIZE, PageIndex};
use vmattest_core::attest::{
    Policy, Region, RegionDigest, page_digest, region_digest, sample_pages,
};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_image::{ImageError, MappedImage};
use vmattest_qemu::{QmpError, VmSpec};

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
    #[error("guest RAM: {0}")]
    Ram(#[from] ImageError),
    #[error("guest RAM file {path}: empty; is the VM running?")]
    EmptyRam { path: PathBuf },
    #[error("vm {vm}: {source}")]
    Qmp {
        vm: String,
        #[source]
        source: QmpError,
    },
    #[error("vm {vm}: status {status}: expected running or paused")]
    Status { vm: String, status: String },
}

impl Classify for MeasureError {
    fn class(&self) -> ErrorClass {
        match self {
            MeasureError::UnknownSubset { .. }
            | MeasureError::UnknownRegion { .. }
            | MeasureError::BeyondRam { .. } => ErrorClass::Input,
            MeasureError::Ram(e) => e.class(),
            MeasureError::Qmp { source, .. } => source.class(),
            MeasureError::EmptyRam { .. } | MeasureError::Status { .. } => ErrorClass::Environment,
        }
    }
}

/// The bytes of `region` within `ram`, or an error naming the region, its range and the RAM size.
pub fn region_bytes<'a>(ram: &'a [u8], region: &Region) -> Result<&'a [u8], MeasureError> {
    let start = region.start.0;
    let end = region.end();
    let ram_bytes = ram.len() as u64;
    let range = usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .filter(|_| end <= ram_bytes);
    match range {
        Some((s, e)) => Ok(&ram[s..e]),
        None => Err(MeasureError::BeyondRam {
            region: region.name.clone(),
            start,
            end,
            ram_bytes,
        }),
    }
}

/// Digests of the given pages (indices relative to the region) of a region's bytes.
fn page_digests(policy: &Policy, bytes: &[u8], pages: &[PageIndex]) -> Vec<(PageIndex, Digest)> {
    pages
        .iter()
        .map(|&i| {
            let at = usize::try_from(i.0).unwrap_or(usize::MAX) * PAGE_SIZE;
            let page = bytes.get(at..at + PAGE_SIZE).unwrap_or(&[]);
            (i, page_digest(policy.alg, page))
        })
        .collect()
}

/// Measures the regions of subset `subset_id` (in subset order) from the nonce's page sample,
/// and the kernel-code region (if the policy has one) over all of its pages.
pub fn measure(
    ram: &[u8],
    policy: &Policy,
    subset_id: &str,
    nonce: &[u8],
) -> Result<(Vec<RegionDigest>, Option<Digest>), MeasureError> {
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
        regions.push((region, region_bytes(ram, region)?));
    }
    let kernel = match policy.regions.iter().find(|r| r.kernel_code) {
        Some(r) => Some((r, region_bytes(ram, r)?)),
        None => None,
    };
    let mut out = Vec::with_capacity(regions.len());
    for (region, bytes) in regions {
        let sample = sample_pages(nonce, region);
        let pages = page_digests(policy, bytes, &sample);
        out.push(RegionDigest {
            name: region.name.clone(),
            pages: pages.len() as u64,
            digest: region_digest(policy.alg, &region.name, &pages),
        });
    }
    // When the subset already hashed every page of the kernel-code region, that digest is it.
    let kernel_code = kernel.map(|(region, bytes)| {
        match out
            .iter()
            .find(|d| d.name == region.name && d.pages == region.pages)
        {
            Some(d) => d.digest,
            None => {
                let all: Vec<PageIndex> = (0..region.pages).map(PageIndex).collect();
                region_digest(policy.alg, &region.name, &page_digests(policy, bytes, &all))
            }
        }
    });
    Ok((out, kernel_code))
}

/// Maps the VM's guest RAM file read-only.
pub fn map_ram(spec: &VmSpec) -> Result<MappedImage, MeasureError> {
    let path = spec.ram_path();
    let image = MappedImage::open(&path)?;
    if image.bytes().is_empty() {
        return Err(MeasureError::EmptyRam { path });
    }
    Ok(image)
}

/// Runs `f` with the guest paused (QMP `stop`, then `cont`), resuming only if it was running.
/// The guest is resumed whatever `f` returns.
pub fn with_paused<T, E>(
    spec: &VmSpec,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<Result<T, E>, MeasureError> {
    let vm = || spec.name().to_owned();
    let qmp_err = |source| MeasureError::Qmp { vm: vm(), source };
    let mut qmp = vmattest_qemu::vm::connect(spec).map_err(qmp_err)?;
    let status = qmp.query_status().map_err(qmp_err)?;
    let was_running = match status.as_str() {
        "running" => true,
        "paused" | "postmigrate" | "prelaunch" => false,
        _ => return Err(MeasureError::Status { vm: vm(), status }),
    };
    if was_running {
        qmp.stop().map_err(qmp_err)?;
    }
    let out = f();
    if was_running {
        qmp.cont().map_err(qmp_err)?;
    }
    Ok(out)
}

/// Measures the running VM of `spec`; with `pause`, the guest is paused while it is read, so
/// that the digests are of one instant.
pub fn measure_vm(
    spec: &VmSpec,
    policy: &Policy,
    subset_id: &str,
    nonce: &[u8],
    pause: bool,
) -> Result<(Vec<RegionDigest>, Option<Digest>), MeasureError> {
    let ram = map_ram(spec)?;
    if pause {
        with_paused(spec, || measure(ram.bytes(), policy, subset_id, nonce))?
    } else {
        measure(ram.bytes(), policy, subset_id, nonce)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use sha2::{Digest as _, Sha256};

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
        let (regions, kernel) = measure(&ram, &policy, "all", &nonce).unwrap();
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
        let (regions, kernel) = measure(&ram, &policy, "d", &[1u8; 16]).unwrap();
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
            .map(|n| measure(&ram, &policy, "d", &[n; 16]).unwrap().0[0].digest)
            .collect();
        assert!(
            digests.iter().skip(1).any(|d| d != &digests[0]),
            "eight nonces all gave the same sample"
        );
        // The same nonce gives the same digest.
        assert_eq!(
            measure(&ram, &policy, "d", &[3; 16]).unwrap().0[0].digest,
            digests[3]
        );
    }

    #[test]
    fn a_region_beyond_ram_is_an_error_naming_it() {
        let policy = Policy::parse(POLICY, None).unwrap();
        let ram = vec![0u8; 0xa000];
        let e = measure(&ram, &policy, "d", &[0; 16])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("region data") && e.contains("0x8000") && e.contains("40960"),
            "{e}"
        );
        let e = measure(&ram, &policy, "nope", &[0; 16])
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
        let image = MappedImage::open(&path).unwrap();
        let policy = Policy::parse(POLICY, None).unwrap();
        let nonce = [5u8; 20];
        assert_eq!(
            measure(image.bytes(), &policy, "all", &nonce).unwrap(),
            measure(&ram, &policy, "all", &nonce).unwrap()
        );
    }
}
