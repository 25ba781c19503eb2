//! Capturing a libvirt domain into its chain: the same capture as for a VM vmattest runs
//! itself, with QMP through libvirt and the layout read from the live domain XML.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_qemu::capture::{CaptureError, CaptureReport, Target, capture_target};
use vmattest_qemu::guard::{GuardProgram, Outcome};
use vmattest_qemu::qmp::{Monitor, QmpError};
use vmattest_qemu::spec::{Disk, DiskFormat, GuestBoot, GuestConfig};
use vmattest_store::{StoreWriter, TakeOptions};
use vmattest_vmconfig::domain::{DomainLayout, SHARED_RAM_XML, domain_layout};

use crate::{Connection, Domain, DomainMonitor, LibvirtError};

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error("domain {domain}: its XML")]
    Xml {
        domain: String,
        #[source]
        source: vmattest_vmconfig::XmlError,
    },
    #[error("domain {domain}: guest RAM is not a shared file: add {SHARED_RAM_XML} to its XML")]
    NotShared { domain: String },
    #[error("domain {domain}: {found} memory backends, expected one (no NUMA cells)")]
    Backends { domain: String, found: usize },
    #[error("domain {domain}: is {state}, expected running or paused")]
    NotRunning { domain: String, state: &'static str },
    #[error("domain {domain}")]
    Qmp {
        domain: String,
        #[source]
        source: QmpError,
    },
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("creating a private scratch directory")]
    Scratch {
        #[source]
        source: std::io::Error,
    },
    /// A restore failed after the domain's old QEMU was stopped: it is not running.
    #[error("domain {domain}: stopped for the restore and not running now")]
    Stopped {
        domain: String,
        #[source]
        source: Box<DomainError>,
    },
    #[error("domain {domain}: its definition is not a <domain> document as libvirt writes it")]
    Definition { domain: String },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "domain {domain}: QEMU names {} as guest RAM: expected a regular file of {want} bytes, found {found}",
        path.display()
    )]
    RamFile {
        domain: String,
        path: PathBuf,
        found: String,
        want: u64,
    },
    #[error(
        "domain {domain}: the chain's RAM is {chain} bytes, the domain's QEMU has {domain_ram}"
    )]
    RamSize {
        domain: String,
        chain: u64,
        domain_ram: u64,
    },
}

impl Classify for DomainError {
    fn class(&self) -> ErrorClass {
        match self {
            DomainError::Libvirt(e) => e.class(),
            DomainError::Xml { source, .. } => source.class(),
            DomainError::NotShared { .. }
            | DomainError::Backends { .. }
            | DomainError::NotRunning { .. } => ErrorClass::Input,
            DomainError::Qmp { source, .. } => source.class(),
            DomainError::Capture(e) => e.class(),
            DomainError::Stopped { source, .. } => source.class(),
            DomainError::Scratch { .. } | DomainError::Io { .. } => ErrorClass::Environment,
            DomainError::Definition { .. } | DomainError::RamSize { .. } => ErrorClass::Input,
            DomainError::RamFile { .. } => ErrorClass::Verification,
        }
    }
}

/// A running domain, its layout and the file behind its RAM.
#[derive(Debug)]
pub struct LiveDomain<'c> {
    pub domain: Domain<'c>,
    pub layout: DomainLayout,
    pub ram: PathBuf,
}

impl<'c> LiveDomain<'c> {
    /// Opens the running (or paused) domain `name` and checks that vmattest can capture it.
    pub fn open(conn: &'c Connection, name: &str) -> Result<LiveDomain<'c>, DomainError> {
        LiveDomain::of(conn.domain(name)?)
    }

    /// As [`LiveDomain::open`], for a domain already looked up.
    pub fn of(domain: Domain<'c>) -> Result<LiveDomain<'c>, DomainError> {
        let name = domain.name().to_owned();
        let name = name.as_str();
        let state = domain.state()?;
        if !matches!(
            state,
            crate::DomainState::Running | crate::DomainState::Paused
        ) {
            return Err(DomainError::NotRunning {
                domain: name.to_owned(),
                state: state.name(),
            });
        }
        let layout = capturable_layout(name, &domain.xml()?)?;
        let ram = ram_file(&domain, layout.memory_mib)?;
        Ok(LiveDomain {
            domain,
            layout,
            ram,
        })
    }

    /// The chain's `config` component: the guest-visible settings, as for a spec.
    pub fn config_bytes(&self) -> Vec<u8> {
        config_bytes(&self.layout)
    }

    /// The domain's disks, named by their target dev.
    pub fn disks(&self) -> Vec<Disk> {
        disks(&self.layout)
    }

    /// What the capture reads; its scratch directory is made in `scratch_in`.
    pub fn target(&self, scratch_in: &Path) -> Target<'_> {
        Target {
            name: self.domain.name(),
            ram: self.ram.clone(),
            disks: self.disks(),
            config: self.config_bytes(),
            scratch_in: scratch_in.to_path_buf(),
            spec: None,
        }
    }
}

/// The layout of domain `name` from its XML, which must keep guest RAM in a shared file.
pub(crate) fn capturable_layout(name: &str, xml: &str) -> Result<DomainLayout, DomainError> {
    let origin = PathBuf::from(format!("of domain {name}"));
    let layout = domain_layout(xml, &origin).map_err(|source| DomainError::Xml {
        domain: name.to_owned(),
        source,
    })?;
    if !layout.shared_file_ram {
        return Err(DomainError::NotShared {
            domain: name.to_owned(),
        });
    }
    Ok(layout)
}

/// The guest-visible settings of a domain, as for a spec: no name, UUID or host paths, so a
/// chain restores into another domain with the same guest.
pub(crate) fn config_bytes(l: &DomainLayout) -> Vec<u8> {
    let boot = match &l.cmdline {
        Some(cmdline) => GuestBoot::Kernel {
            cmdline: Some(cmdline),
        },
        None => GuestBoot::Firmware,
    };
    GuestConfig {
        boot,
        disks: l
            .disks
            .iter()
            .map(|d| (d.target.as_str(), d.format.as_str()))
            .collect(),
        machine: &l.machine,
        memory_mib: l.memory_mib,
        macs: l.macs.iter().map(String::as_str).collect(),
        vcpus: l.vcpus,
    }
    .bytes()
}

/// A domain's disks, named by their target dev.
pub(crate) fn disks(l: &DomainLayout) -> Vec<Disk> {
    l.disks
        .iter()
        .map(|d| Disk {
            name: d.target.clone(),
            path: d.source.clone(),
            format: if d.format == "qcow2" {
                DiskFormat::Qcow2
            } else {
                DiskFormat::Raw
            },
        })
        .collect()
}

/// The shared file behind the domain's one memory backend, from QEMU itself. QEMU runs with
/// less trust than vmattest: the path it names must be a regular file (not a symlink) of
/// exactly the domain's memory size, or vmattest would read (or, restoring, write) another.
pub(crate) fn ram_file(domain: &Domain<'_>, memory_mib: u64) -> Result<PathBuf, DomainError> {
    let qmp = |source| DomainError::Qmp {
        domain: domain.name().to_owned(),
        source,
    };
    let mut mon = DomainMonitor::new(domain);
    let memdevs = mon.execute("query-memdev", Value::Null).map_err(qmp)?;
    let list = memdevs.as_array().map(Vec::as_slice).unwrap_or_default();
    let [dev] = list else {
        return Err(DomainError::Backends {
            domain: domain.name().to_owned(),
            found: list.len(),
        });
    };
    let id = dev.get("id").and_then(Value::as_str).unwrap_or("pc.ram");
    if dev.get("share").and_then(Value::as_bool) != Some(true) {
        return Err(DomainError::NotShared {
            domain: domain.name().to_owned(),
        });
    }
    let path = mon
        .execute(
            "qom-get",
            json!({ "path": format!("/objects/{id}"), "property": "mem-path" }),
        )
        .map_err(qmp)?;
    let path = match path.as_str() {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(DomainError::NotShared {
                domain: domain.name().to_owned(),
            });
        }
    };
    let want = memory_mib.saturating_mul(1 << 20);
    let found = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => m.len(),
        Ok(_) => {
            return Err(DomainError::RamFile {
                domain: domain.name().to_owned(),
                path,
                found: "a symlink or a non-file".to_owned(),
                want,
            });
        }
        Err(source) => return Err(DomainError::Io { path, source }),
    };
    if found != want {
        return Err(DomainError::RamFile {
            domain: domain.name().to_owned(),
            path,
            found: format!("{found} bytes"),
            want,
        });
    }
    Ok(path)
}

/// Captures the running domain `name` as the next link of `store`: paused only while it is
/// measured, resumed through the same QMP session, and every migration setting the capture
/// changed set back. `guard` starts a guardian that resumes the guest through libvirt should
/// this process die while it is paused (`vmattest __guard --domain NAME`, see
/// [`vmattest_qemu::guard`]).
pub fn capture(
    conn: &Connection,
    name: &str,
    store: &StoreWriter,
    opts: &TakeOptions<'_>,
    guard: Option<&GuardProgram>,
) -> Result<CaptureReport, DomainError> {
    let live = LiveDomain::open(conn, name)?;
    // A fresh private directory: the shared temporary directory itself is never touched.
    let scratch = vmattest_qemu::private::owned_tempdir(SCRATCH_PREFIX, None)
        .map_err(|source| DomainError::Scratch { source })?;
    let target = live.target(scratch.path());
    let mut mon = DomainMonitor::new(&live.domain);
    let marker = scratch.path().join("capture.pause");
    let mut who: Vec<OsString> = vec!["--domain".into(), name.into()];
    who.extend(["--connect".into(), conn.uri().into()]);
    let mut arm = || {
        vmattest_qemu::guard::arm_at(&marker, &who, guard).map_err(|source| CaptureError::Guard {
            vm: name.to_owned(),
            source,
        })
    };
    Ok(capture_target(
        &target,
        &mut mon,
        store,
        opts,
        vmattest_qemu::Mode::Paused,
        Some(&mut arm),
    )?)
}

/// The guardian's second half for a domain: the capture that wrote `marker` died with the
/// guest paused. Resumes it through libvirt, sets `x-ignore-shared` back to QEMU's default and
/// removes the dead capture's scratch directory (the marker's).
pub fn resume_after_capture(
    conn: &Connection,
    name: &str,
    marker: &Path,
) -> Result<Outcome, DomainError> {
    let domain = conn.domain(name)?;
    let mut mon = DomainMonitor::new(&domain);
    let outcome =
        vmattest_qemu::guard::resume(&mut mon, marker).map_err(|source| CaptureError::Guard {
            vm: name.to_owned(),
            source,
        })?;
    mon.set_capabilities(&[("x-ignore-shared", false)])
        .map_err(|source| DomainError::Qmp {
            domain: name.to_owned(),
            source,
        })?;
    if let Some(dir) = marker.parent().filter(|d| {
        d.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(SCRATCH_PREFIX))
    }) {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(outcome)
}

/// Name prefix of a capture's private scratch directory.
const SCRATCH_PREFIX: &str = "vmattest-capture-";
