//! What vmattest needs of a libvirt domain to capture and restore it, from its live XML: the
//! guest-visible settings (the chain's `config` component, in the same form as a spec's), the
//! disks it reads and whether guest RAM is a shared file it can hash in place.

use std::path::{Path, PathBuf};

use crate::libvirt::{Cx, XmlError, attr, child, children, memory_mib, number, parse, text};

/// A domain as a capture sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainLayout {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// `<os><type machine>`, as libvirt expanded it (`pc-i440fx-10.0` for `pc`).
    pub machine: String,
    /// Direct kernel boot's command line, or `None` for firmware boot.
    pub cmdline: Option<String>,
    pub disks: Vec<DomainDisk>,
    /// MAC addresses of the NICs, lowercase, in document order.
    pub macs: Vec<String>,
    /// `<memoryBacking><source type='file'/><access mode='shared'/>`: QEMU keeps guest RAM in
    /// a shared file that vmattest can map.
    pub shared_file_ram: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// `<target dev>`: the component's name in the chain.
    pub target: String,
    pub source: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
}

/// The XML a domain needs for vmattest to capture it (see [`DomainLayout::shared_file_ram`]).
pub const SHARED_RAM_XML: &str =
    "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>";

/// Reads a domain's layout from its XML (`origin` names it in errors). Disks must be files or
/// block devices, raw or qcow2; empty CD-ROM and floppy drives are skipped.
pub fn domain_layout(xml: &str, origin: &Path) -> Result<DomainLayout, XmlError> {
    let cx = Cx { path: origin };
    let doc = parse(xml, origin)?;
    let domain = doc.root_element();
    let name = child(domain, "name").ok_or_else(|| cx.missing("<name>"))?;
    let memory = child(domain, "memory").ok_or_else(|| cx.missing("<memory>"))?;
    let vcpu = child(domain, "vcpu").ok_or_else(|| cx.missing("<vcpu>"))?;
    let os = child(domain, "os").ok_or_else(|| cx.missing("<os>"))?;
    let machine = child(os, "type")
        .and_then(|t| t.attribute("machine"))
        .unwrap_or_default();
    let cmdline =
        child(os, "kernel").map(|_| child(os, "cmdline").map(text).unwrap_or("").to_owned());
    let backing = child(domain, "memoryBacking");
    let shared_file_ram = backing.is_some_and(|b| {
        child(b, "source").and_then(|s| s.attribute("type")) == Some("file")
            && child(b, "access").and_then(|a| a.attribute("mode")) == Some("shared")
    });
    let devices = child(domain, "devices");
    let mut disks = Vec::new();
    for disk in devices.iter().flat_map(|d| children(*d, "disk")) {
        let target = child(disk, "target").ok_or_else(|| cx.missing("<disk><target>"))?;
        let dev = attr(&cx, target, "<disk><target>", "dev")?;
        let el = format!("<disk> {dev:?}");
        let source_attr = match disk.attribute("type").unwrap_or("file") {
            "file" => "file",
            "block" => "dev",
            other => {
                return Err(cx.invalid(&format!("{el} type"), "\"file\" or \"block\"", other));
            }
        };
        let Some(source) = child(disk, "source").and_then(|s| s.attribute(source_attr)) else {
            if matches!(disk.attribute("device"), Some("cdrom" | "floppy")) {
                continue;
            }
            return Err(cx.missing(&format!("{el} <source {source_attr}>")));
        };
        let format = child(disk, "driver")
            .and_then(|d| d.attribute("type"))
            .unwrap_or("raw");
        if !matches!(format, "raw" | "qcow2") {
            return Err(cx.invalid(&format!("{el} <driver type>"), "raw or qcow2", format));
        }
        disks.push(DomainDisk {
            target: dev.to_owned(),
            source: PathBuf::from(source),
            format: format.to_owned(),
        });
    }
    let mut macs = Vec::new();
    for nic in devices.iter().flat_map(|d| children(*d, "interface")) {
        if let Some(mac) = child(nic, "mac").and_then(|m| m.attribute("address")) {
            macs.push(mac.to_ascii_lowercase());
        }
    }
    Ok(DomainLayout {
        name: text(name).trim().to_owned(),
        memory_mib: memory_mib(&cx, memory)?,
        vcpus: number(&cx, "<vcpu>", text(vcpu).trim(), "a vCPU count")?,
        machine: machine.to_owned(),
        cmdline,
        disks,
        macs,
        shared_file_ram,
    })
}
