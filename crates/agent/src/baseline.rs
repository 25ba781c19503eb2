//! Golden baselines: one page digest per page of every region of a policy, taken from a
//! snapshot whose chain verified against pinned keys, with the snapshot's provenance.

use std::path::Path;
use vmattest_core::class::{Classify, ErrorClass};

use vmattest_api::{NewBaseline, Provenance, RegionPages};
use vmattest_core::alg::PageIndex;
use vmattest_core::attest::locate::kept_len;
use vmattest_core::attest::{PatchSite, Policy, SiteKind};
use vmattest_core::chain::SeqNo;
use vmattest_image::{ImageError, MappedImage};
use vmattest_store::{PinnedKeys, ReplayOptions, Store, StoreError, StoreSecret};

use crate::measure::{MeasureError, page_digests, region_bytes, table_sites};

/// The component a VM capture stores guest RAM under.
pub const DEFAULT_COMPONENT: &str = vmattest_qemu::capture::RAM;

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("component {name:?}: not in the snapshot at seq {seq} (it has {known})")]
    NoComponent {
        name: String,
        seq: u64,
        known: String,
    },
    #[error("scratch directory in {dir}")]
    Scratch {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rebuilt component")]
    Image(#[from] ImageError),
    #[error("component {component}")]
    Region {
        component: String,
        #[source]
        source: MeasureError,
    },
}

impl Classify for BaselineError {
    fn class(&self) -> ErrorClass {
        match self {
            BaselineError::Store(e) => e.class(),
            BaselineError::NoComponent { .. } => ErrorClass::Input,
            BaselineError::Scratch { .. } => ErrorClass::Environment,
            BaselineError::Image(e) => e.class(),
            BaselineError::Region { source, .. } => source.class(),
        }
    }
}

/// One hex page digest per page of every region of `policy`, read from `memory` (a guest RAM
/// image: guest-physical address = offset), with the bytes of `sites` zeroed.
pub fn region_pages(
    memory: &[u8],
    policy: &Policy,
    sites: &[PatchSite],
) -> Result<Vec<RegionPages>, MeasureError> {
    let mut out = Vec::with_capacity(policy.regions.len());
    for region in &policy.regions {
        region_bytes(memory, region)?;
        let all: Vec<PageIndex> = (0..region.pages).map(PageIndex).collect();
        out.push(RegionPages {
            name: region.name.clone(),
            pages: page_digests(policy, memory, region, &all, sites)
                .into_iter()
                .map(|(_, d)| d.to_hex())
                .collect(),
        });
    }
    Ok(out)
}

/// The bytes of each region of `policy` a baseline keeps (whole pages from its start, cut at
/// the end of `memory`), zstd-compressed; regions over the limit are left out.
pub fn region_bytes_zstd(memory: &[u8], policy: &Policy) -> Vec<(String, Vec<u8>)> {
    policy
        .regions
        .iter()
        .filter_map(|r| {
            let len = kept_len(r)?;
            let start = usize::try_from(r.start.0).ok()?.min(memory.len());
            let end = usize::try_from(r.start.0.checked_add(len)?)
                .ok()?
                .min(memory.len());
            let z = zstd::bulk::compress(&memory[start..end], 3).ok()?;
            Some((r.name.clone(), z))
        })
        .collect()
}

/// A golden baseline: the server's request, and the bytes of its regions for naming
/// differences by offset later.
#[derive(Debug, Clone)]
pub struct Golden {
    pub request: NewBaseline,
    /// `(region, zstd bytes)` per [`region_bytes_zstd`].
    pub bytes: Vec<(String, Vec<u8>)>,
}

/// The patch sites of `policy`'s regions in `memory`, from its jump table and static-call
/// tables (none without them).
pub fn patch_sites(memory: &[u8], policy: &Policy) -> Result<Vec<PatchSite>, MeasureError> {
    table_sites(memory, policy)
}

/// Verifies the chain of the store at `store_dir` up to `seq` against `keys`, rebuilds the
/// snapshot in a scratch directory under the store's `tmp/` (removed afterwards) and computes
/// the baseline of `policy` from its `component` (see [`DEFAULT_COMPONENT`]), with the bytes
/// of its regions.
pub fn baseline_from_store(
    store_dir: &Path,
    seq: u64,
    keys: &PinnedKeys,
    secret: Option<&StoreSecret>,
    policy: &Policy,
    component: &str,
) -> Result<Golden, BaselineError> {
    let store = Store::open(store_dir)?;
    let tmp = store.root().join("tmp");
    let scratch_err = |source| BaselineError::Scratch {
        dir: tmp.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&tmp).map_err(scratch_err)?;
    let scratch = vmattest_qemu::private::tempdir("baseline-", Some(&tmp)).map_err(scratch_err)?;
    let out = scratch.path().join("state");
    let opts = ReplayOptions {
        upto: Some(SeqNo(seq)),
        keys,
        secret,
        max_age: None,
        revocations: &[],
    };
    let verified = store.restore(&opts, &out)?;
    if !verified.components.iter().any(|c| c.name == component) {
        return Err(BaselineError::NoComponent {
            name: component.to_owned(),
            seq,
            known: crate::component_names(&verified.components),
        });
    }
    let image = MappedImage::open(&out.join(component))?;
    let region_err = |source| BaselineError::Region {
        component: component.to_owned(),
        source,
    };
    let sites = patch_sites(image.bytes(), policy).map_err(region_err)?;
    let regions = region_pages(image.bytes(), policy, &sites).map_err(region_err)?;
    let link = store.read_link(verified.seq)?;
    let bytes = region_bytes_zstd(image.bytes(), policy);
    let request = NewBaseline {
        policy_id: policy.id().to_hex(),
        regions,
        patch_sites: sites
            .iter()
            .filter(|s| s.kind == SiteKind::Label)
            .map(|s| (s.addr.0, s.len, s.target.0))
            .collect(),
        call_sites: sites
            .iter()
            .filter(|s| s.kind != SiteKind::Label)
            .map(|s| (s.addr.0, s.kind.id(), s.target.0))
            .collect(),
        provenance: Provenance {
            store_vm_id: store.meta().vm_id.clone(),
            seq: verified.seq.0,
            link_digest: verified.link.to_hex(),
            state_root: verified.state_root.to_hex(),
            signer_key_ids: link.value().key_ids.iter().map(|k| k.to_hex()).collect(),
            snapshot_time: verified.time,
            component: component.to_owned(),
        },
    };
    Ok(Golden { request, bytes })
}
