//! Parameters of a vmattest VM spec.
//!
//! The spec has no firmware and no VLAN fields, so `firmware.sha256` and `nic.I.vlan` never
//! come from it.

use std::path::PathBuf;

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_qemu::{Boot, VmSpec};

use crate::measure::{MeasureError, disk_root, sha256_file};
use crate::{Builder, Param, ParamError};

#[derive(Debug, thiserror::Error)]
pub enum SpecParamError {
    #[error("spec {spec}: {field}")]
    Measure {
        spec: PathBuf,
        field: String,
        source: Box<MeasureError>,
    },
    #[error("spec {spec}: {field}")]
    Name {
        spec: PathBuf,
        field: String,
        source: Box<ParamError>,
    },
}

impl Classify for SpecParamError {
    fn class(&self) -> ErrorClass {
        match self {
            SpecParamError::Measure { source, .. } => source.class(),
            SpecParamError::Name { source, .. } => source.class(),
        }
    }
}

/// The parameters of `spec`, sorted by name. Reads and hashes the kernel, initrd and disks.
pub fn spec_params(spec: &VmSpec) -> Result<Vec<Param>, SpecParamError> {
    let name_err = |field: &str| {
        let field = field.to_string();
        move |source| SpecParamError::Name {
            spec: spec.source().to_path_buf(),
            field,
            source: Box::new(source),
        }
    };
    let measure_err = |field: String| {
        move |source| SpecParamError::Measure {
            spec: spec.source().to_path_buf(),
            field,
            source: Box::new(source),
        }
    };
    let mut b = Builder::default();
    b.push("memory_mib", spec.memory_mib().to_string())
        .map_err(name_err("memory_mib"))?;
    b.push("vcpus", spec.vcpus().to_string())
        .map_err(name_err("vcpus"))?;
    b.push("machine", spec.machine())
        .map_err(name_err("machine"))?;
    match spec.boot() {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            b.push("boot", "kernel").map_err(name_err("boot"))?;
            let digest = sha256_file(kernel).map_err(measure_err("boot.kernel".into()))?;
            b.push("kernel.sha256", digest)
                .map_err(name_err("boot.kernel"))?;
            if let Some(initrd) = initrd {
                let digest = sha256_file(initrd).map_err(measure_err("boot.initrd".into()))?;
                b.push("initrd.sha256", digest)
                    .map_err(name_err("boot.initrd"))?;
            }
            if let Some(cmdline) = cmdline {
                b.push("cmdline", cmdline.as_str())
                    .map_err(name_err("boot.cmdline"))?;
            }
        }
        Boot::Disk(disk) => {
            b.push("boot", format!("disk:{disk}"))
                .map_err(name_err("boot.disk"))?;
        }
    }
    for (i, d) in spec.disks().iter().enumerate() {
        let field = format!("disk[{i}] {:?}", d.name);
        b.push(format!("disk.{}.format", d.name), d.format.as_str())
            .map_err(name_err(&field))?;
        let root = disk_root(&d.path, d.format.as_str()).map_err(measure_err(field.clone()))?;
        b.push(format!("disk.{}.root", d.name), root)
            .map_err(name_err(&field))?;
    }
    for (i, nic) in spec.nics().iter().enumerate() {
        b.push(format!("nic.{i}.mac"), nic.mac.as_str())
            .map_err(name_err(&format!("nic[{i}].mac")))?;
        b.push(format!("nic.{i}.net"), nic.net.param())
            .map_err(name_err(&format!("nic[{i}]")))?;
    }
    b.finish().map_err(name_err("spec"))
}
