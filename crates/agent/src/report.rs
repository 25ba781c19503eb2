//! Snapshot attestation: does the running VM still hold the state an attested snapshot
//! recorded? The chain is verified up to the seq against pinned keys, then each component that
//! can be recomputed from the running VM is hashed (guest paused) with the store's tree
//! parameters and its root compared with the snapshot's.
//!
//! Recomputed: guest RAM (`ram`, from the shared RAM file), raw disks (in place) and the
//! configuration (`config`, the spec's canonical config bytes). Not recomputed, and so left out
//! of the report: the device and CPU state (`device-state`), which only a migration could
//! produce and which differs with every pause; and qcow2 disks, whose guest view only
//! `qemu-img` can give.

use std::path::{Path, PathBuf};
use vmattest_core::class::{Classify, ErrorClass};

use vmattest_core::alg::Digest;

use vmattest_core::attest::{ComponentCheck, SnapshotReport};
use vmattest_core::chain::{ComponentKind, ComponentRoot, SeqNo};
use vmattest_core::record::Signed;
use vmattest_core::tree::{ImageTree, NoProgress, TreeError, TreeParams};
use vmattest_image::{ImageError, MappedImage};
use vmattest_qemu::DiskFormat;
use vmattest_qemu::capture::{CONFIG, RAM};
use vmattest_sign::Signer;
use vmattest_store::{PinnedKeys, ReplayOptions, Store, StoreError, StoreSecret};

use crate::evidence::{EvidenceError, sign};
use crate::guest::{Guest, Layout};
use crate::measure::{MeasureError, Paused};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vm(#[from] MeasureError),
    #[error("component {name}")]
    Image {
        name: String,
        #[source]
        source: ImageError,
    },
    #[error("component {name}")]
    Tree {
        name: String,
        #[source]
        source: TreeError,
    },
    #[error(
        "snapshot at seq {seq}: none of its components ({known}) can be recomputed from the running VM"
    )]
    Nothing { seq: u64, known: String },
    #[error("nonce: {found} bytes, expected at most 64")]
    Nonce { found: usize },
    #[error(transparent)]
    Sign(#[from] EvidenceError),
}

impl Classify for ReportError {
    fn class(&self) -> ErrorClass {
        match self {
            ReportError::Store(e) => e.class(),
            ReportError::Vm(e) => e.class(),
            ReportError::Image { source, .. } => source.class(),
            ReportError::Tree { .. } | ReportError::Nothing { .. } | ReportError::Nonce { .. } => {
                ErrorClass::Input
            }
            ReportError::Sign(e) => e.class(),
        }
    }
}

/// How to verify the chain a report is about.
#[derive(Debug, Clone, Copy)]
pub struct ChainCheck<'a> {
    pub store: &'a Path,
    pub seq: u64,
    pub keys: &'a PinnedKeys,
    pub secret: Option<&'a StoreSecret>,
}

/// What of the running VM a snapshot component corresponds to.
enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

fn source_of(layout: &Layout, c: &ComponentRoot) -> Option<Source> {
    match c.kind {
        ComponentKind::Memory if c.name == RAM => Some(Source::File(layout.ram.clone())),
        ComponentKind::Disk => layout
            .disks
            .iter()
            .find(|d| d.name == c.name && d.format == DiskFormat::Raw)
            .map(|d| Source::File(d.path.clone())),
        ComponentKind::Config if c.name == CONFIG => Some(Source::Bytes(layout.config.clone())),
        _ => None,
    }
}

fn root_of(params: &TreeParams, name: &str, bytes: &[u8]) -> Result<Digest, ReportError> {
    ImageTree::build(params, bytes, &NoProgress)
        .map(|t| t.root())
        .map_err(|source| ReportError::Tree {
            name: name.to_owned(),
            source,
        })
}

/// Recomputes the roots of the recomputable components of `components` from the paused VM
/// (its RAM and disks are hashed in place, which is sound only while the guest writes nothing).
pub fn recompute(
    paused: &Paused,
    params: &TreeParams,
    components: &[ComponentRoot],
) -> Result<Vec<ComponentCheck>, ReportError> {
    let mut out = Vec::new();
    for c in components {
        let found = match source_of(paused.layout(), c) {
            None => continue,
            Some(Source::Bytes(b)) => root_of(params, &c.name, &b)?,
            Some(Source::File(path)) => {
                let image = MappedImage::open(&path).map_err(|source| ReportError::Image {
                    name: c.name.clone(),
                    source,
                })?;
                root_of(params, &c.name, image.bytes())?
            }
        };
        out.push(ComponentCheck {
            name: c.name.clone(),
            expected: c.root,
            found,
        });
    }
    Ok(out)
}

/// Verifies the chain up to `chain.seq`, then compares the running guest (paused while
/// it is hashed, resumed only if it was running) with the snapshot there, and signs the report.
/// `nonce` (at most 64 bytes, may be empty) is the requester's.
pub fn attest_snapshot(
    chain: &ChainCheck<'_>,
    guest: &Guest<'_>,
    signer: &dyn Signer,
    nonce: &[u8],
) -> Result<Signed<SnapshotReport>, ReportError> {
    if nonce.len() > vmattest_core::attest::evidence::MAX_NONCE_LEN {
        return Err(ReportError::Nonce { found: nonce.len() });
    }
    let store = Store::open(chain.store)?;
    let opts = ReplayOptions {
        upto: Some(SeqNo(chain.seq)),
        keys: chain.keys,
        secret: chain.secret,
        max_age: None,
        revocations: &[],
    };
    let verified = store.verify(&opts)?;
    let components =
        guest.with_paused(|paused| recompute(paused, store.params(), &verified.components))??;
    if components.is_empty() {
        return Err(ReportError::Nothing {
            seq: verified.seq.0,
            known: crate::component_names(&verified.components),
        });
    }
    let report = SnapshotReport {
        vm: guest.name().to_owned(),
        time: vmattest_host::now(),
        nonce: nonce.to_vec(),
        seq: verified.seq,
        link: verified.link,
        components,
        key_ids: vec![signer.key_id()],
    };
    Ok(sign(report, signer)?)
}
