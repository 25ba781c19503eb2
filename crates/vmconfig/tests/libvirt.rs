//! libvirt domain XML → parameters: the two fixtures, memory units, refused input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::{pairs, pattern, sha256sum, to_qcow2, verity_root, write};
use vmattest_testkit::images::error_chain as chain;
use vmattest_vmconfig::libvirt::MAX_XML_BYTES;
use vmattest_vmconfig::{Param, XmlError, domain_params, load_domain_params};

/// The fixture `name` with `@DIR@` replaced by `dir`, written into `dir`.
fn fixture(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let text = std::fs::read_to_string(src).unwrap();
    write(
        dir,
        name,
        text.replace("@DIR@", dir.to_str().unwrap()).as_bytes(),
    )
}

#[test]
fn kernel_boot_guest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = write(d, "vmlinuz", &pattern(70_000, 11));
    let initrd = write(d, "initrd.img", &pattern(33_333, 12));
    let root = write(d, "root.img", &pattern(20 * 4096, 13));
    let xml = fixture("kernel-boot.xml", d);
    let params = load_domain_params(&xml).unwrap();
    let (k, i, r) = (sha256sum(&kernel), sha256sum(&initrd), verity_root(&root));
    assert_eq!(
        pairs(&params),
        vec![
            ("boot", "kernel"),
            ("cmdline", "console=ttyS0 root=/dev/vda ro quiet"),
            ("disk.vda.format", "raw"),
            ("disk.vda.root", r.as_str()),
            ("initrd.sha256", i.as_str()),
            ("kernel.sha256", k.as_str()),
            ("machine", "pc-q35-7.2"),
            ("memory_mib", "2048"),
            ("nic.0.mac", "52:54:00:ab:cd:01"),
            ("nic.0.model", "virtio"),
            ("nic.0.net", "bridge:br0"),
            ("nic.0.vlan", "42"),
            ("vcpu.0.pin", "2"),
            ("vcpu.1.pin", "3-4,^4"),
            ("vcpus", "2"),
        ]
    );
}

#[test]
fn uefi_disk_boot_guest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let code = write(d, "OVMF_CODE.fd", &pattern(64 * 1024, 21));
    write(d, "OVMF_VARS.fd", &pattern(4096, 22));
    let system_raw = write(d, "system.raw", &pattern(32 * 4096, 23));
    to_qcow2(&system_raw, &d.join("system.qcow2"));
    let data = write(d, "data.img", &pattern(8 * 4096, 24));
    let xml = fixture("uefi-disk-boot.xml", d);
    let params = load_domain_params(&xml).unwrap();
    let (f, s, v) = (
        sha256sum(&code),
        verity_root(&system_raw),
        verity_root(&data),
    );
    assert_eq!(
        pairs(&params),
        vec![
            ("boot", "disk:vda,nic:0"),
            ("disk.vda.format", "qcow2"),
            ("disk.vda.root", s.as_str()),
            ("disk.vdb.format", "raw"),
            ("disk.vdb.root", v.as_str()),
            ("firmware.sha256", f.as_str()),
            ("machine", "pc-q35-8.2"),
            ("memory_mib", "4096"),
            ("nic.0.mac", "52:54:00:10:20:30"),
            ("nic.0.model", "virtio"),
            ("nic.0.net", "network:default"),
            ("nic.1.mac", "52:54:00:10:20:31"),
            ("nic.1.model", "e1000e"),
            ("nic.1.net", "network:backend"),
            ("vcpus", "4"),
        ]
    );
}

#[test]
fn missing_kernel_names_element_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "initrd.img", b"i");
    write(d, "root.img", &pattern(4096, 1));
    let xml = fixture("kernel-boot.xml", d);
    let err = load_domain_params(&xml).unwrap_err();
    assert!(matches!(err, XmlError::Measure { .. }), "{err}");
    let msg = chain(&err);
    assert!(
        msg.contains("<os><kernel>") && msg.contains("vmlinuz"),
        "{msg}"
    );
}

/// A domain with nothing but memory, one vCPU and an `<os>`.
fn minimal(memory: &str) -> Result<Vec<Param>, XmlError> {
    let xml =
        format!("<domain type='kvm'>{memory}<vcpu>1</vcpu><os><type>hvm</type></os></domain>");
    domain_params(&xml, Path::new("test.xml"))
}

fn memory_of(memory: &str) -> Result<String, XmlError> {
    let params = minimal(memory)?;
    Ok(params
        .iter()
        .find(|p| p.name == "memory_mib")
        .unwrap()
        .value
        .clone())
}

#[test]
fn memory_units() {
    let ok = [
        ("<memory>1048576</memory>", "1024"),
        ("<memory unit='KiB'>524288</memory>", "512"),
        ("<memory unit='k'>2048</memory>", "2"),
        ("<memory unit='b'>16777216</memory>", "16"),
        ("<memory unit='bytes'>1048576</memory>", "1"),
        ("<memory unit='MiB'>768</memory>", "768"),
        ("<memory unit='M'>3</memory>", "3"),
        ("<memory unit='MB'>1048576</memory>", "1000000"),
        ("<memory unit='GiB'>2</memory>", "2048"),
        ("<memory unit='G'>1</memory>", "1024"),
        ("<memory unit='TiB'>1</memory>", "1048576"),
        ("<memory unit='KiB'> 4096 </memory>", "4"),
    ];
    for (xml, mib) in ok {
        assert_eq!(memory_of(xml).unwrap(), mib, "{xml}");
    }
    let bad = [
        "<memory unit='KB'>1024</memory>",
        "<memory unit='GB'>1</memory>",
        "<memory unit='KiB'>1000</memory>",
        "<memory unit='KiB'>0</memory>",
        "<memory unit='XB'>1</memory>",
        "<memory unit='KiB'>-1</memory>",
        "<memory unit='KiB'>1e6</memory>",
        "<memory unit='TiB'>99999999999</memory>",
    ];
    for xml in bad {
        let err = memory_of(xml).unwrap_err();
        assert!(matches!(err, XmlError::Invalid { .. }), "{xml}: {err}");
        assert!(err.to_string().contains("<memory"), "{err}");
    }
    let err = minimal("").unwrap_err();
    assert!(matches!(err, XmlError::Missing { .. }), "{err}");
}

#[test]
fn minimal_domain() {
    let params = minimal("<memory unit='MiB'>64</memory>").unwrap();
    assert_eq!(pairs(&params), vec![("memory_mib", "64"), ("vcpus", "1")]);
}

#[test]
fn boot_devices_and_firmware_autoselection() {
    let xml = "<domain><memory unit='MiB'>64</memory><vcpu>1</vcpu><os firmware='efi'>\
               <type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/>\
               <boot dev='network'/></os></domain>";
    let params = domain_params(xml, Path::new("d.xml")).unwrap();
    assert_eq!(
        pairs(&params),
        vec![
            ("boot", "hd,network"),
            ("firmware", "efi"),
            ("machine", "q35"),
            ("memory_mib", "64"),
            ("vcpus", "1"),
        ]
    );
}

#[test]
fn malformed_xml_is_refused() {
    let at = Path::new("bad.xml");
    type Check = fn(&XmlError) -> bool;
    let cases: [(&str, Check); 6] = [
        ("<domain><memory>1024", |e| {
            matches!(e, XmlError::Parse { .. })
        }),
        ("<vm><memory>1024</memory></vm>", |e| {
            matches!(e, XmlError::NotDomain { .. })
        }),
        (
            "<!DOCTYPE domain [<!ENTITY a 'aaaa'>]><domain>&a;</domain>",
            |e| matches!(e, XmlError::Doctype { .. }),
        ),
        ("<!DOCTYPE domain><domain/>", |e| {
            matches!(e, XmlError::Doctype { .. })
        }),
        ("<domain>&unknown;</domain>", |e| {
            matches!(e, XmlError::Parse { .. })
        }),
        ("<domain><memory unit='MiB'>64</memory></domain>", |e| {
            matches!(e, XmlError::Missing { .. })
        }),
    ];
    for (xml, expected) in cases {
        let err = domain_params(xml, at).unwrap_err();
        assert!(expected(&err), "{xml}: {err}");
        assert!(err.to_string().contains("bad.xml"), "{err}");
    }
}

#[test]
fn bad_fields_are_named() {
    let os = "<os><type>hvm</type></os>";
    let cases = [
        (
            format!(
                "<memory unit='MiB'>64</memory><vcpu>2</vcpu><cputune><vcpupin vcpu='2' cpuset='1'/></cputune>{os}"
            ),
            "vcpupin vcpu",
        ),
        (
            format!(
                "<memory unit='MiB'>64</memory><vcpu>1</vcpu><cputune><vcpupin vcpu='0' cpuset='a'/></cputune>{os}"
            ),
            "vcpupin cpuset",
        ),
        (
            format!("<memory unit='MiB'>64</memory><vcpu>0</vcpu>{os}"),
            "<vcpu>",
        ),
        (
            format!(
                "<memory unit='MiB'>64</memory><vcpu>1</vcpu>{os}<devices><interface type='user'><mac address='52:54:00:zz:00:01'/></interface></devices>"
            ),
            "<mac address>",
        ),
        (
            format!(
                "<memory unit='MiB'>64</memory><vcpu>1</vcpu>{os}<devices><interface type='user'><mac address='52:54:00:00:00:01'/><vlan><tag id='5000'/></vlan></interface></devices>"
            ),
            "<vlan><tag id>",
        ),
        (
            format!(
                "<memory unit='MiB'>64</memory><vcpu>1</vcpu>{os}<devices><disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vda'/></disk></devices>"
            ),
            "\"vda\" type",
        ),
        (
            format!(
                "<memory unit='MiB'>64</memory><vcpu>1</vcpu>{os}<devices><disk type='file' device='disk'><source file='rel.img'/><target dev='vda'/></disk></devices>"
            ),
            "<source file>",
        ),
        (
            format!(
                "<memory unit='MiB'>64</memory><vcpu>1</vcpu>{os}<devices><disk type='file' device='disk'><target dev='vda'/></disk></devices>"
            ),
            "<source file>",
        ),
        (
            format!(
                "<memory unit='MiB'>64</memory><vcpu>1</vcpu>{os}<devices><disk type='file' device='disk'><source file='/x'/><target dev='VDA'/></disk></devices>"
            ),
            "VDA",
        ),
    ];
    for (body, element) in cases {
        let xml = format!("<domain>{body}</domain>");
        let err = domain_params(&xml, Path::new("d.xml")).unwrap_err();
        assert!(err.to_string().contains(element), "{element}: {err}");
    }
}

#[test]
fn oversize_xml_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!(
        "<domain><!-- {} --></domain>",
        "x".repeat(usize::try_from(MAX_XML_BYTES).unwrap())
    );
    let path = write(dir.path(), "big.xml", big.as_bytes());
    let err = load_domain_params(&path).unwrap_err();
    assert!(matches!(err, XmlError::TooLarge { .. }), "{err}");
    let err = domain_params(&big, &path).unwrap_err();
    assert!(matches!(err, XmlError::TooLarge { .. }), "{err}");
}

#[test]
fn duplicate_vcpupin_is_refused() {
    let xml = "<domain><memory unit='MiB'>64</memory><vcpu>2</vcpu><cputune>\
               <vcpupin vcpu='1' cpuset='1'/><vcpupin vcpu='1' cpuset='2'/></cputune>\
               <os><type>hvm</type></os></domain>";
    let err = domain_params(xml, Path::new("d.xml")).unwrap_err();
    assert!(chain(&err).contains("vcpu.1.pin"), "{err}");
}
