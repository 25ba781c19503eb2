//! The vmattest agent: runs beside a VM's QEMU on its host, answers the attestation server's
//! challenges with signed evidence of the guest's memory, computes golden baselines from
//! verified snapshots, and reports whether a running VM still matches an attested snapshot.
//!
//! - [`measure`]: map guest RAM read-only and digest a policy's regions for a nonce.
//! - [`evidence`]: build and sign evidence.
//! - [`baseline`]: page digests of every policy region from a verified snapshot.
//! - [`report`]: compare a running VM with a verified snapshot and sign the report.
//! - [`run`]: the challenge-measure-submit loop, over `vmattest_client`.

pub mod baseline;
mod event;
pub mod evidence;
pub mod guest;
pub mod locate;
pub mod measure;
pub mod report;
pub mod run;

pub use baseline::{
    BaselineError, Golden, baseline_from_store, patch_sites, region_bytes_zstd, region_pages,
};
pub use evidence::{EvidenceError, Measured, evidence_bytes, sign_evidence};
pub use guest::Guest;
pub use measure::{MeasureError, Measurement, measure, measure_vm};
pub use report::{ChainCheck, ReportError, attest_snapshot};
pub use run::{Event, LoopOptions, Rollback, RunError, attest_once, run_loop};

/// `a, b, c`: the components a chain has, for errors that name what was there.
pub(crate) fn component_names(components: &[vmattest_core::chain::ComponentRoot]) -> String {
    let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
    names.join(", ")
}

/// The class of one error of this crate or of the libraries below it, for
/// [`vmattest_host::class::classify_with`].
pub fn class_of(e: &(dyn std::error::Error + 'static)) -> Option<vmattest_core::class::ErrorClass> {
    vmattest_host::return_class_of!(e;
        BaselineError,
        EvidenceError,
        MeasureError,
        ReportError,
        RunError
    );
    vmattest_host::class::of(e)
}
