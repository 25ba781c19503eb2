//! libvirt domains as host workflows: capture into a chain, and status, for the domains an
//! operator already runs (`--domain NAME [--connect URI]`).

use std::fmt;
use std::path::Path;

use serde::Serialize;
use vmattest_core::chain::SeqNo;
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::tree::Progress;
use vmattest_libvirt::{Connection, DomainError, LibvirtError, LiveDomain};
use vmattest_qemu::capture::CaptureReport;
use vmattest_qemu::guard::Outcome;
use vmattest_qemu::restore::RestoreReport;
use vmattest_store::{Store, StoreError, TakeOptions};

use crate::verifier::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum HostDomainError {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vm(#[from] crate::vm::HostVmError),
    #[error("guarding a capture")]
    Guard(#[from] vmattest_qemu::guard::GuardError),
}

impl Classify for HostDomainError {
    fn class(&self) -> ErrorClass {
        match self {
            HostDomainError::Libvirt(e) => e.class(),
            HostDomainError::Domain(e) => e.class(),
            HostDomainError::Store(e) => e.class(),
            HostDomainError::Vm(e) => e.class(),
            HostDomainError::Guard(e) => e.class(),
        }
    }
}

/// Captures the running domain `name` (of the daemon at `uri`, `qemu:///system` by default)
/// as the next link of the store at `root`.
pub fn take(
    root: &Path,
    name: &str,
    uri: Option<&str>,
    opts: &TakeOptions<'_>,
) -> Result<CaptureReport, HostDomainError> {
    let store = Store::open_writer(root)?;
    let conn = Connection::open(uri)?;
    let guard = crate::vm::guard_program()?;
    Ok(vmattest_libvirt::capture(
        &conn,
        name,
        &store,
        opts,
        Some(&guard),
    )?)
}

/// Verifies the chain at `root` up to `seq` (the head when `None`) against the verifier's
/// pinned keys, then rolls domain `name` back to it (or migrates the chain into it) and runs
/// it under libvirt. A chain that does not verify leaves the domain as it was.
pub fn rollback(
    name: &str,
    uri: Option<&str>,
    root: &Path,
    verifier: &Verifier,
    seq: Option<SeqNo>,
    progress: Option<Box<dyn Progress + Send>>,
) -> Result<RestoreReport, HostDomainError> {
    let mut store = Store::open(root)?;
    if let Some(p) = progress {
        store.set_progress(p);
    }
    let conn = Connection::open(uri)?;
    Ok(vmattest_libvirt::restore(
        &conn,
        name,
        &store,
        &verifier.options(seq, None),
    )?)
}

/// The definition of domain `name` a restart would use (`virsh dumpxml --inactive`).
pub fn definition(name: &str, uri: Option<&str>) -> Result<String, HostDomainError> {
    let conn = Connection::open(uri)?;
    Ok(conn.domain(name)?.definition()?)
}

/// The guardian of a domain capture (`vmattest __guard --domain`): waits for the capturer,
/// and resumes the guest through libvirt if it died with the guest paused.
pub fn guard(
    name: &str,
    uri: Option<&str>,
    marker: &Path,
    input: impl std::io::Read,
) -> Result<Outcome, HostDomainError> {
    if let Some(outcome) = vmattest_qemu::guard::await_capturer(marker, input)? {
        return Ok(outcome);
    }
    let conn = Connection::open(uri)?;
    Ok(vmattest_libvirt::resume_after_capture(&conn, name, marker)?)
}

/// What `vm status --domain` reports.
#[derive(Debug, Clone, Serialize)]
pub struct DomainStatus {
    pub domain: String,
    /// libvirt's state: running, paused, shut off or other.
    pub state: &'static str,
    /// libvirt's id while it runs.
    pub id: Option<u32>,
    /// The shared file behind guest RAM, when vmattest can capture the domain.
    pub ram: Option<String>,
    pub capturable: bool,
    /// Why vmattest cannot capture it, when it cannot.
    pub reason: Option<String>,
}

impl fmt::Display for DomainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain {}: {}", self.domain, self.state)?;
        if let Some(id) = self.id {
            write!(f, " (id {id})")?;
        }
        match (&self.reason, &self.ram) {
            (Some(why), _) => write!(f, "; cannot be captured: {why}"),
            (None, Some(ram)) => write!(f, "; RAM in {ram}"),
            (None, None) => Ok(()),
        }
    }
}

pub fn status(name: &str, uri: Option<&str>) -> Result<DomainStatus, HostDomainError> {
    let conn = Connection::open(uri)?;
    let domain = conn.domain(name)?;
    let state = domain.state()?;
    let id = domain.id();
    let (ram, reason) = match LiveDomain::of(domain) {
        Ok(live) => (Some(live.ram.display().to_string()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(DomainStatus {
        domain: name.to_owned(),
        state: state.name(),
        id,
        capturable: reason.is_none(),
        ram,
        reason,
    })
}
