//! Parameters of a libvirt domain, from its XML (`virsh dumpxml NAME`).
//!
//! Input over [`MAX_XML_BYTES`] and any document type declaration are refused, so no entity
//! is ever expanded. Host paths are never parameters: files the guest sees are named by their
//! SHA-256 and disks by their dm-verity root (see [`crate::measure`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use roxmltree::{Document, Node, ParsingOptions};
use vmattest_core::class::{Classify, ErrorClass, io_class};

use crate::measure::{Accept, MeasureError, disk_root, open_checked, sha256_file};
use crate::{Builder, Param, ParamError};

/// Largest domain XML accepted.
pub const MAX_XML_BYTES: u64 = 4 << 20;
/// Most XML nodes parsed; a real domain has a few hundred.
const MAX_XML_NODES: u32 = 200_000;
/// Most attributes on one element; libvirt's elements have a handful. The parser checks an
/// element's attributes for duplicates pairwise, so this cap is what keeps parsing linear.
pub const MAX_ATTRIBUTES: usize = 64;
/// Deepest element nesting; libvirt's domains nest fewer than ten levels.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("domain XML {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("domain XML {path}: {found} bytes, expected at most {max}")]
    TooLarge { path: PathBuf, max: u64, found: u64 },
    #[error("domain XML {path}: not UTF-8 text")]
    NotUtf8 { path: PathBuf },
    #[error("domain XML {path}: found a {found} declaration, expected none (no DTDs or entities)")]
    Doctype { path: PathBuf, found: &'static str },
    #[error("domain XML {0}")]
    NotAFile(Box<MeasureError>),
    #[error("domain XML {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("domain XML {path}: line {line}: <{element}>: more than {max} {what}")]
    Limit {
        path: PathBuf,
        line: usize,
        element: String,
        what: &'static str,
        max: usize,
    },
    #[error("domain XML {path}: root element <{found}>, expected <domain>")]
    NotDomain { path: PathBuf, found: String },
    #[error("domain XML {path}: {element}: missing")]
    Missing { path: PathBuf, element: String },
    #[error("domain XML {path}: {element}: expected {expected}, found {found:?}")]
    Invalid {
        path: PathBuf,
        element: String,
        expected: String,
        found: String,
    },
    #[error("domain XML {path}: {element}")]
    Measure {
        path: PathBuf,
        element: String,
        source: Box<MeasureError>,
    },
    #[error("domain XML {path}: {element}")]
    Name {
        path: PathBuf,
        element: String,
        source: Box<ParamError>,
    },
}

impl Classify for XmlError {
    fn class(&self) -> ErrorClass {
        match self {
            XmlError::Io { source, .. } => io_class(source.kind()),
            XmlError::NotAFile(e) => e.class(),
            XmlError::Measure { source, .. } => source.class(),
            XmlError::Name { source, .. } => source.class(),
            XmlError::TooLarge { .. }
            | XmlError::NotUtf8 { .. }
            | XmlError::Doctype { .. }
            | XmlError::Parse { .. }
            | XmlError::Limit { .. }
            | XmlError::NotDomain { .. }
            | XmlError::Missing { .. }
            | XmlError::Invalid { .. } => ErrorClass::Input,
        }
    }
}

/// Reads the domain XML at `path` (at most [`MAX_XML_BYTES`]) and returns its parameters.
pub fn load_domain_params(path: &Path) -> Result<Vec<Param>, XmlError> {
    let io = |source| XmlError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Never blocks on a FIFO; refuses anything but a regular file.
    let file = open_checked(path, Accept::File).map_err(|e| match e {
        MeasureError::Read { source, .. } => io(source),
        other => XmlError::NotAFile(Box::new(other)),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_XML_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_XML_BYTES {
        let found = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        return Err(XmlError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_XML_BYTES,
            found,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| XmlError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    domain_params(&text, path)
}

/// The parameters of the domain described by `xml`, read from `origin` (named in errors).
/// Reads and hashes the kernel, initrd, firmware and disk images the XML names.
/// Parses domain XML under the limits above: size, no DTD, attributes, depth and nodes; the
/// root must be `<domain>`.
pub(crate) fn parse<'x>(xml: &'x str, origin: &Path) -> Result<Document<'x>, XmlError> {
    if xml.len() as u64 > MAX_XML_BYTES {
        return Err(XmlError::TooLarge {
            path: origin.to_path_buf(),
            max: MAX_XML_BYTES,
            found: xml.len() as u64,
        });
    }
    // roxmltree refuses a DTD with declarations; an empty `<!DOCTYPE x>` is refused here too.
    for found in ["<!DOCTYPE", "<!ENTITY"] {
        if xml.contains(found) {
            return Err(XmlError::Doctype {
                path: origin.to_path_buf(),
                found,
            });
        }
    }
    prescan(xml, origin)?;
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(xml, options).map_err(|e| XmlError::Parse {
        path: origin.to_path_buf(),
        detail: e.to_string(),
    })?;
    let root = doc.root_element().tag_name().name();
    if root != "domain" {
        return Err(XmlError::NotDomain {
            path: origin.to_path_buf(),
            found: root.to_string(),
        });
    }
    Ok(doc)
}

pub fn domain_params(xml: &str, origin: &Path) -> Result<Vec<Param>, XmlError> {
    let cx = Cx { path: origin };
    let doc = parse(xml, origin)?;
    let domain = doc.root_element();

    let mut b = Builder::default();
    let memory = child(domain, "memory").ok_or_else(|| cx.missing("<memory>"))?;
    let mib = memory_mib(&cx, memory)?;
    cx.push(&mut b, "<memory>", "memory_mib", mib.to_string())?;
    let vcpu = child(domain, "vcpu").ok_or_else(|| cx.missing("<vcpu>"))?;
    let vcpus: u32 = number(
        &cx,
        "<vcpu>",
        text(vcpu).trim(),
        "a vCPU count of at least 1",
    )
    .and_then(|n| match n {
        0 => Err(cx.invalid("<vcpu>", "a vCPU count of at least 1", "0")),
        n => Ok(n),
    })?;
    cx.push(&mut b, "<vcpu>", "vcpus", vcpus.to_string())?;
    if let Some(cputune) = child(domain, "cputune") {
        for pin in children(cputune, "vcpupin") {
            let el = "<cputune><vcpupin>";
            let n = attr(&cx, pin, el, "vcpu")?;
            let n: u32 = number(&cx, "<cputune><vcpupin vcpu>", n, "a vCPU number")?;
            if n >= vcpus {
                return Err(cx.invalid(
                    "<cputune><vcpupin vcpu>",
                    &format!("a vCPU number below {vcpus}"),
                    &n.to_string(),
                ));
            }
            let cpuset = attr(&cx, pin, el, "cpuset")?.trim();
            if cpuset.is_empty() || !cpuset.bytes().all(|c| b"0123456789,-^".contains(&c)) {
                return Err(cx.invalid(
                    "<cputune><vcpupin cpuset>",
                    "a host CPU list like \"2-3,^3\"",
                    cpuset,
                ));
            }
            cx.push(&mut b, el, &format!("vcpu.{n}.pin"), cpuset)?;
        }
    }

    let os = child(domain, "os").ok_or_else(|| cx.missing("<os>"))?;
    os_params(&cx, &mut b, os)?;
    let devices = child(domain, "devices");
    let has_kernel = child(os, "kernel").is_some();
    let has_os_boot = child(os, "boot").is_some();
    let mut device_boot: Vec<(u32, String)> = Vec::new();
    for disk in devices.iter().flat_map(|d| children(*d, "disk")) {
        disk_params(&cx, &mut b, disk, &mut device_boot)?;
    }
    for (i, nic) in devices
        .iter()
        .flat_map(|d| children(*d, "interface"))
        .enumerate()
    {
        nic_params(&cx, &mut b, i, nic, &mut device_boot)?;
    }
    if !has_kernel && !has_os_boot && !device_boot.is_empty() {
        device_boot.sort();
        let order: Vec<String> = device_boot.into_iter().map(|(_, d)| d).collect();
        cx.push(&mut b, "<devices> <boot order>", "boot", order.join(","))?;
    }
    b.finish().map_err(|source| XmlError::Name {
        path: origin.to_path_buf(),
        element: "<domain>".to_string(),
        source: Box::new(source),
    })
}

/// One linear pass over the markup that refuses an element with more than [`MAX_ATTRIBUTES`]
/// attributes or nested deeper than [`MAX_DEPTH`], before the parser (whose duplicate-attribute
/// check is quadratic in an element's attributes) sees it. Malformed markup is left for the
/// parser to report; this pass only has to count conservatively.
fn prescan(xml: &str, origin: &Path) -> Result<(), XmlError> {
    let bytes = xml.as_bytes();
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut i = 0usize;
    // Advances past the first `end` at or after `from`, counting lines; the end of input
    // when there is none.
    let skip_to = |from: usize, end: &[u8], line: &mut usize| -> usize {
        let rest = &bytes[from.min(bytes.len())..];
        let n = rest
            .windows(end.len())
            .position(|w| w == end)
            .map_or(rest.len(), |p| p + end.len());
        *line += rest[..n].iter().filter(|&&b| b == b'\n').count();
        from + n
    };
    let limit = |line: usize, element: &[u8], what: &'static str, max: usize| XmlError::Limit {
        path: origin.to_path_buf(),
        line,
        element: String::from_utf8_lossy(&element[..element.len().min(64)]).into_owned(),
        what,
        max,
    };
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                line += 1;
                i += 1;
                continue;
            }
            b'<' => {}
            _ => {
                i += 1;
                continue;
            }
        }
        let rest = &bytes[i..];
        if rest.starts_with(b"<!--") {
            i = skip_to(i + 4, b"-->", &mut line);
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(i + 9, b"]]>", &mut line);
        } else if rest.starts_with(b"<?") {
            i = skip_to(i + 2, b"?>", &mut line);
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(i + 2, b">", &mut line);
        } else {
            // A start tag: its name, then one `=` per attribute outside quoted values.
            let start_line = line;
            let name_end = rest
                .iter()
                .position(|b| b.is_ascii_whitespace() || matches!(b, b'/' | b'>'))
                .unwrap_or(rest.len());
            let name = &rest[1..name_end.max(1)];
            let mut attributes = 0usize;
            let mut quote: Option<u8> = None;
            let mut j = i + name_end;
            let mut closed_empty = false;
            while j < bytes.len() {
                let b = bytes[j];
                j += 1;
                if b == b'\n' {
                    line += 1;
                }
                match (quote, b) {
                    (Some(q), _) if b == q => quote = None,
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') => quote = Some(b),
                    (None, b'=') => {
                        attributes += 1;
                        if attributes > MAX_ATTRIBUTES {
                            return Err(limit(start_line, name, "attributes", MAX_ATTRIBUTES));
                        }
                    }
                    (None, b'>') => {
                        closed_empty = bytes.get(j.wrapping_sub(2)) == Some(&b'/');
                        break;
                    }
                    (None, _) => {}
                }
            }
            if !closed_empty {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(limit(start_line, name, "levels of nesting", MAX_DEPTH));
                }
            }
            i = j;
        }
    }
    Ok(())
}

/// `<os>`: machine, direct kernel boot, firmware and boot order.
fn os_params(cx: &Cx<'_>, b: &mut Builder, os: Node<'_, '_>) -> Result<(), XmlError> {
    if let Some(machine) = child(os, "type").and_then(|t| t.attribute("machine")) {
        cx.push(b, "<os><type machine>", "machine", machine)?;
    }
    let kernel = child(os, "kernel");
    if let Some(kernel) = kernel {
        cx.push(b, "<os><kernel>", "boot", "kernel")?;
        cx.push(
            b,
            "<os><kernel>",
            "kernel.sha256",
            cx.hash(kernel, "<os><kernel>")?,
        )?;
    } else {
        let devs: Vec<&str> = children(os, "boot")
            .map(|n| attr(cx, n, "<os><boot>", "dev"))
            .collect::<Result<_, _>>()?;
        if !devs.is_empty() {
            cx.push(b, "<os><boot dev>", "boot", devs.join(","))?;
        }
    }
    if let Some(initrd) = child(os, "initrd") {
        cx.push(
            b,
            "<os><initrd>",
            "initrd.sha256",
            cx.hash(initrd, "<os><initrd>")?,
        )?;
    }
    if let Some(cmdline) = child(os, "cmdline") {
        cx.push(b, "<os><cmdline>", "cmdline", text(cmdline))?;
    }
    if let Some(firmware) = os.attribute("firmware") {
        cx.push(b, "<os firmware>", "firmware", firmware)?;
    }
    if let Some(loader) = child(os, "loader") {
        cx.push(
            b,
            "<os><loader>",
            "firmware.sha256",
            cx.hash(loader, "<os><loader>")?,
        )?;
    }
    Ok(())
}

/// One `<disk>`: a file or block device is measured; an empty CD-ROM or floppy drive is
/// skipped; any other source (network, volume, ...) is refused.
fn disk_params(
    cx: &Cx<'_>,
    b: &mut Builder,
    disk: Node<'_, '_>,
    device_boot: &mut Vec<(u32, String)>,
) -> Result<(), XmlError> {
    let target = child(disk, "target").ok_or_else(|| cx.missing("<disk><target>"))?;
    let dev = attr(cx, target, "<disk><target>", "dev")?;
    let el = format!("<disk> {dev:?}");
    let kind = disk.attribute("type").unwrap_or("file");
    let device = disk.attribute("device").unwrap_or("disk");
    let source_attr = match kind {
        "file" => "file",
        "block" => "dev",
        other => {
            return Err(cx.invalid(&format!("{el} type"), "\"file\" or \"block\"", other));
        }
    };
    let source = child(disk, "source").and_then(|s| s.attribute(source_attr));
    let Some(source) = source else {
        if matches!(device, "cdrom" | "floppy") {
            return Ok(());
        }
        return Err(cx.missing(&format!("{el} <source {source_attr}>")));
    };
    let format = child(disk, "driver")
        .and_then(|d| d.attribute("type"))
        .unwrap_or("raw");
    let path = absolute(cx, &format!("{el} <source {source_attr}>"), source)?;
    cx.push(b, &el, &format!("disk.{dev}.format"), format)?;
    let root = disk_root(path, format).map_err(|source| XmlError::Measure {
        path: cx.path.to_path_buf(),
        element: el.clone(),
        source: Box::new(source),
    })?;
    cx.push(b, &el, &format!("disk.{dev}.root"), root)?;
    if let Some(order) = boot_order(cx, disk, &el)? {
        device_boot.push((order, format!("disk:{dev}")));
    }
    Ok(())
}

/// The `I`th `<interface>`: MAC, model and VLAN tags.
fn nic_params(
    cx: &Cx<'_>,
    b: &mut Builder,
    i: usize,
    nic: Node<'_, '_>,
    device_boot: &mut Vec<(u32, String)>,
) -> Result<(), XmlError> {
    let el = format!("<interface> #{i}");
    let mac = child(nic, "mac").ok_or_else(|| cx.missing(&format!("{el} <mac>")))?;
    let mac = attr(cx, mac, &format!("{el} <mac>"), "address")?;
    let octets: Vec<&str> = mac.split(':').collect();
    if octets.len() != 6
        || octets
            .iter()
            .any(|o| o.len() != 2 || !o.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(cx.invalid(
            &format!("{el} <mac address>"),
            "six hex octets like 52:54:00:12:34:56",
            mac,
        ));
    }
    cx.push(b, &el, &format!("nic.{i}.mac"), mac.to_ascii_lowercase())?;
    cx.push(b, &el, &format!("nic.{i}.net"), nic_net(nic))?;
    if let Some(model) = child(nic, "model").and_then(|m| m.attribute("type")) {
        cx.push(b, &el, &format!("nic.{i}.model"), model)?;
    }
    if let Some(vlan) = child(nic, "vlan") {
        let mut tags = Vec::new();
        for tag in children(vlan, "tag") {
            let id = attr(cx, tag, &format!("{el} <vlan><tag>"), "id")?;
            let id: u32 = number(cx, &format!("{el} <vlan><tag id>"), id, "a VLAN id 0-4095")?;
            if id > 4095 {
                return Err(cx.invalid(
                    &format!("{el} <vlan><tag id>"),
                    "a VLAN id 0-4095",
                    &id.to_string(),
                ));
            }
            tags.push(id.to_string());
        }
        if tags.is_empty() {
            return Err(cx.missing(&format!("{el} <vlan><tag>")));
        }
        cx.push(b, &el, &format!("nic.{i}.vlan"), tags.join(","))?;
    }
    if let Some(order) = boot_order(cx, nic, &el)? {
        device_boot.push((order, format!("nic:{i}")));
    }
    Ok(())
}

/// Where an `<interface>` is attached on the host, named as for specs: `user`,
/// `bridge:NAME`, `network:NAME`, `direct:DEV`, `tap:DEV` for an unmanaged tap (libvirt names
/// a managed one only at start, so it stays `ethernet`), else the interface type.
fn nic_net(nic: Node<'_, '_>) -> String {
    let kind = nic.attribute("type").unwrap_or("user");
    let source = |a: &str| child(nic, "source").and_then(|s| s.attribute(a));
    let named = |prefix: &str, name: Option<&str>| match name {
        Some(n) => format!("{prefix}:{n}"),
        None => kind.to_owned(),
    };
    match kind {
        "bridge" => named("bridge", source("bridge")),
        "network" => named("network", source("network")),
        "direct" => named("direct", source("dev")),
        "ethernet" => {
            let target = child(nic, "target").filter(|t| t.attribute("managed") == Some("no"));
            named("tap", target.and_then(|t| t.attribute("dev")))
        }
        other => other.to_owned(),
    }
}

/// A device's `<boot order=N>`, if any.
fn boot_order(cx: &Cx<'_>, node: Node<'_, '_>, el: &str) -> Result<Option<u32>, XmlError> {
    let Some(boot) = child(node, "boot") else {
        return Ok(None);
    };
    let order = attr(cx, boot, &format!("{el} <boot>"), "order")?;
    number(
        cx,
        &format!("{el} <boot order>"),
        order,
        "a boot order number",
    )
    .map(Some)
}

/// `<memory unit=U>N</memory>` in whole MiB. libvirt's units: no unit is KiB; `KB`, `MB`, ...
/// are powers of 1000 and `k`/`KiB`, `M`/`MiB`, ... powers of 1024.
pub(crate) fn memory_mib(cx: &Cx<'_>, memory: Node<'_, '_>) -> Result<u64, XmlError> {
    let unit = memory.attribute("unit").unwrap_or("KiB");
    let scale: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1000_u64.pow(2),
        "m" | "M" | "MiB" => 1 << 20,
        "GB" => 1000_u64.pow(3),
        "g" | "G" | "GiB" => 1 << 30,
        "TB" => 1000_u64.pow(4),
        "t" | "T" | "TiB" => 1 << 40,
        other => {
            return Err(cx.invalid(
                "<memory unit>",
                "a libvirt unit (b, KiB, MiB, GiB, TiB, KB, MB, GB, TB)",
                other,
            ));
        }
    };
    let value = number::<u64>(cx, "<memory>", text(memory).trim(), "a memory size")?;
    let bytes = value.checked_mul(scale).ok_or_else(|| {
        cx.invalid(
            "<memory>",
            "a memory size below 16 EiB",
            &format!("{value} {unit}"),
        )
    })?;
    if bytes == 0 || bytes % (1 << 20) != 0 {
        return Err(cx.invalid(
            "<memory>",
            "a non-zero whole number of MiB",
            &format!("{value} {unit}"),
        ));
    }
    Ok(bytes >> 20)
}

fn absolute<'a>(cx: &Cx<'_>, element: &str, value: &'a str) -> Result<&'a Path, XmlError> {
    let path = Path::new(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(cx.invalid(element, "an absolute path", value))
    }
}

pub(crate) fn number<T: std::str::FromStr>(
    cx: &Cx<'_>,
    element: &str,
    value: &str,
    expected: &str,
) -> Result<T, XmlError> {
    if !value.bytes().all(|c| c.is_ascii_digit()) {
        return Err(cx.invalid(element, expected, value));
    }
    value
        .parse()
        .map_err(|_| cx.invalid(element, expected, value))
}

pub(crate) fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

pub(crate) fn children<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'input>> + 'a {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

pub(crate) fn text<'a>(node: Node<'a, '_>) -> &'a str {
    node.text().unwrap_or("")
}

pub(crate) fn attr<'a>(
    cx: &Cx<'_>,
    node: Node<'a, '_>,
    element: &str,
    name: &str,
) -> Result<&'a str, XmlError> {
    node.attribute(name)
        .ok_or_else(|| cx.missing(&format!("{element} attribute {name:?}")))
}

/// Error context: the file being read.
pub(crate) struct Cx<'a> {
    pub(crate) path: &'a Path,
}

impl Cx<'_> {
    pub(crate) fn missing(&self, element: &str) -> XmlError {
        XmlError::Missing {
            path: self.path.to_path_buf(),
            element: element.to_string(),
        }
    }

    pub(crate) fn invalid(&self, element: &str, expected: &str, found: &str) -> XmlError {
        XmlError::Invalid {
            path: self.path.to_path_buf(),
            element: element.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    fn push(
        &self,
        b: &mut Builder,
        element: &str,
        name: &str,
        value: impl Into<String>,
    ) -> Result<(), XmlError> {
        b.push(name, value).map_err(|source| XmlError::Name {
            path: self.path.to_path_buf(),
            element: element.to_string(),
            source: Box::new(source),
        })
    }

    /// The SHA-256 of the file named by `node`'s text, which must be an absolute path.
    fn hash(&self, node: Node<'_, '_>, element: &str) -> Result<String, XmlError> {
        let path = absolute(self, element, text(node).trim())?;
        sha256_file(path).map_err(|source| XmlError::Measure {
            path: self.path.to_path_buf(),
            element: element.to_string(),
            source: Box::new(source),
        })
    }
}
