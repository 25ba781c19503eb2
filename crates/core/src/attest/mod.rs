//! Runtime attestation: region policies, page sampling, evidence, appraisal and snapshot
//! reports. Pure: agents read memory and servers store results elsewhere.

pub mod evidence;
pub mod locate;
pub mod patch;
pub mod policy;
pub mod report;
pub mod sample;
pub mod score;
pub mod static_call;
pub mod symbols;

#[cfg(test)]
mod patch_tests;
#[cfg(test)]
mod static_call_tests;
#[cfg(test)]
mod tests;

use core::fmt;

use crate::class::{Classify, ErrorClass};

pub use evidence::{Evidence, RegionDigest, SignedEvidence, SiteEvidence};
pub use patch::{PatchSite, SiteKind, SiteReport, SiteState};
pub use policy::{JumpTable, Policy, PolicyFile, Region, StaticCalls, Subset};
pub use report::{ComponentCheck, SignedSnapshotReport, SnapshotReport};
pub use sample::{page_digest, region_digest, sample_pages};
pub use score::{Appraisal, RegionOutcome, Status, TrustVector, appraise};
pub use symbols::SystemMap;

/// A guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddr(pub u64);

impl fmt::Display for GuestAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("policy: {0}")]
    PolicySyntax(String),
    #[error("policy {field}: expected {expected}, found {found}")]
    Policy {
        field: String,
        expected: String,
        found: String,
    },
    #[error("System.map line {line}: {reason}")]
    SystemMap { line: usize, reason: String },
    #[error("System.map has no symbol {0}")]
    UnknownSymbol(String),
    #[error("jump table entry {entry}: expected {expected}, found {found}")]
    PatchTable {
        entry: u64,
        expected: String,
        found: String,
    },
    #[error("{table} entry {entry}: expected {expected}, found {found}")]
    StaticCallTable {
        table: &'static str,
        entry: u64,
        expected: String,
        found: String,
    },
}

/// Policies and System.map files are the caller's input.
impl Classify for AttestError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}
