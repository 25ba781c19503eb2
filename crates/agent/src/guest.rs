//! The VM the agent attests: one vmattest started from a spec, or a libvirt domain. Both keep
//! guest RAM in a shared file and take QMP (a domain's through libvirt); what differs is how
//! their files are found and how they are paused and rolled back.

use std::path::{Path, PathBuf};

use vmattest_core::chain::SeqNo;
use vmattest_host::verifier::Verifier;
use vmattest_libvirt::{Connection, DomainMonitor, LiveDomain};
use vmattest_qemu::qmp::Monitor;
use vmattest_qemu::restore::RestoreReport;
use vmattest_qemu::spec::Disk;
use vmattest_qemu::{QmpError, VmSpec};

use crate::measure::{MeasureError, Paused};
use crate::run::RunError;

#[derive(Debug, Clone, Copy)]
pub enum Guest<'a> {
    Spec(&'a VmSpec),
    /// A libvirt domain, looked up anew for every measurement: a rollback or a restart gives
    /// it another QEMU and another RAM file.
    Domain {
        name: &'a str,
        uri: Option<&'a str>,
    },
}

/// The files of a guest, resolved at the moment they are read.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: String,
    pub ram: PathBuf,
    pub disks: Vec<Disk>,
    /// The chain's `config` component for this guest.
    pub config: Vec<u8>,
}

impl Layout {
    pub fn of_spec(spec: &VmSpec) -> Layout {
        Layout {
            name: spec.name().to_owned(),
            ram: spec.ram_path(),
            disks: spec.disks().to_vec(),
            config: spec.config_bytes(),
        }
    }

    fn of_domain(live: &LiveDomain<'_>) -> Layout {
        Layout {
            name: live.domain.name().to_owned(),
            ram: live.ram.clone(),
            disks: live.disks(),
            config: live.config_bytes(),
        }
    }
}

impl Guest<'_> {
    pub fn name(&self) -> &str {
        match self {
            Guest::Spec(s) => s.name(),
            Guest::Domain { name, .. } => name,
        }
    }

    /// The guest's files now.
    pub fn layout(&self) -> Result<Layout, MeasureError> {
        match self {
            Guest::Spec(s) => Ok(Layout::of_spec(s)),
            Guest::Domain { name, uri } => {
                let conn = Connection::open(*uri).map_err(domain_err)?;
                let live = LiveDomain::open(&conn, name)?;
                Ok(Layout::of_domain(&live))
            }
        }
    }

    /// Runs `f` with the guest paused (QMP `stop`, then `cont`), resuming only if it was
    /// running. The guest is resumed whatever `f` returns.
    pub fn with_paused<T, E>(
        &self,
        f: impl FnOnce(&Paused) -> Result<T, E>,
    ) -> Result<Result<T, E>, MeasureError> {
        match self {
            Guest::Spec(spec) => {
                let qmp_err = |source| MeasureError::Qmp {
                    vm: spec.name().to_owned(),
                    source,
                };
                let mut qmp = vmattest_qemu::vm::connect(spec).map_err(qmp_err)?;
                paused_by(&mut qmp, Layout::of_spec(spec), f)
            }
            Guest::Domain { name, uri } => {
                let conn = Connection::open(*uri).map_err(domain_err)?;
                let live = LiveDomain::open(&conn, name)?;
                let layout = Layout::of_domain(&live);
                let mut mon = DomainMonitor::new(&live.domain);
                paused_by(&mut mon, layout, f)
            }
        }
    }

    /// Verifies the chain at `store` up to `seq` and rolls the guest back to it.
    pub fn roll_back(
        &self,
        store: &Path,
        verifier: &Verifier,
        seq: u64,
    ) -> Result<RestoreReport, RunError> {
        let seq_no = Some(SeqNo(seq));
        match self {
            Guest::Spec(spec) => vmattest_host::vm::rollback(spec, store, verifier, seq_no, None)
                .map_err(|source| RunError::Rollback { seq, source }),
            Guest::Domain { name, uri } => {
                vmattest_host::domain::rollback(name, *uri, store, verifier, seq_no, None)
                    .map_err(|source| RunError::DomainRollback { seq, source })
            }
        }
    }
}

fn domain_err(e: vmattest_libvirt::LibvirtError) -> MeasureError {
    MeasureError::Domain(e.into())
}

fn paused_by<T, E>(
    mon: &mut dyn Monitor,
    layout: Layout,
    f: impl FnOnce(&Paused) -> Result<T, E>,
) -> Result<Result<T, E>, MeasureError> {
    let vm = layout.name.clone();
    let qmp_err = |source: QmpError| MeasureError::Qmp {
        vm: vm.clone(),
        source,
    };
    let status = mon.query_status().map_err(qmp_err)?;
    let was_running = match status.as_str() {
        "running" => true,
        "paused" | "postmigrate" | "prelaunch" => false,
        _ => return Err(MeasureError::Status { vm, status }),
    };
    if was_running {
        mon.stop().map_err(qmp_err)?;
    }
    let out = f(&Paused::new(layout));
    if was_running {
        mon.cont().map_err(qmp_err)?;
    }
    Ok(out)
}
