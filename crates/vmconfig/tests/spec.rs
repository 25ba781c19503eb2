//! VM spec → parameters, checked against sha256sum and veritysetup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{pairs, pattern, sha256sum, to_qcow2, verity_root, write};
use vmattest_qemu::VmSpec;
use vmattest_testkit::images::error_chain as chain;
use vmattest_vmconfig::{SpecParamError, spec_params};

fn load(dir: &Path, text: &str) -> VmSpec {
    VmSpec::parse(text, &dir.join("vm.toml"), dir).unwrap()
}

#[test]
fn kernel_boot_spec() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = write(d, "vmlinuz", &pattern(100_000, 1));
    let initrd = write(d, "initrd.img", &pattern(50_001, 2));
    let root = write(d, "root.img", &pattern(16 * 4096, 3));
    let data_raw = write(d, "data.raw", &pattern(9 * 4096, 4));
    to_qcow2(&data_raw, &d.join("data.qcow2"));
    let spec = load(
        d,
        r#"
name = "t1"
memory_mib = 512
vcpus = 2
accel = "tcg"
machine = "q35"
[boot]
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0 root=/dev/vda"
[[disk]]
name = "root"
path = "root.img"
[[disk]]
name = "data"
path = "data.qcow2"
format = "qcow2"
[[nic]]
mac = "52:54:00:AA:00:01"
[[nic]]
mac = "52:54:00:aa:00:02"
bridge = "br0"
"#,
    );
    let params = spec_params(&spec).unwrap();
    let (k, i) = (sha256sum(&kernel), sha256sum(&initrd));
    let (r, dr) = (verity_root(&root), verity_root(&data_raw));
    assert_eq!(
        pairs(&params),
        vec![
            ("boot", "kernel"),
            ("cmdline", "console=ttyS0 root=/dev/vda"),
            ("disk.data.format", "qcow2"),
            ("disk.data.root", dr.as_str()),
            ("disk.root.format", "raw"),
            ("disk.root.root", r.as_str()),
            ("initrd.sha256", i.as_str()),
            ("kernel.sha256", k.as_str()),
            ("machine", "q35"),
            ("memory_mib", "512"),
            ("nic.0.mac", "52:54:00:aa:00:01"),
            ("nic.0.net", "user"),
            ("nic.1.mac", "52:54:00:aa:00:02"),
            ("nic.1.net", "bridge:br0"),
            ("vcpus", "2"),
        ]
    );
}

#[test]
fn disk_boot_spec_has_no_kernel_params() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = write(d, "root.img", &pattern(4096, 5));
    let spec = load(
        d,
        "name = \"t2\"\nmemory_mib = 256\naccel = \"tcg\"\n[boot]\ndisk = \"root\"\n\
         [[disk]]\nname = \"root\"\npath = \"root.img\"\n",
    );
    let params = spec_params(&spec).unwrap();
    let r = verity_root(&root);
    assert_eq!(
        pairs(&params),
        vec![
            ("boot", "disk:root"),
            ("disk.root.format", "raw"),
            ("disk.root.root", r.as_str()),
            ("machine", "pc"),
            ("memory_mib", "256"),
            ("vcpus", "1"),
        ]
    );
}

#[test]
fn missing_kernel_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = load(
        dir.path(),
        "name = \"t3\"\nmemory_mib = 256\naccel = \"tcg\"\n[boot]\nkernel = \"nope\"\n",
    );
    let err = spec_params(&spec).unwrap_err();
    assert!(matches!(err, SpecParamError::Measure { .. }), "{err}");
    let msg = chain(&err);
    assert!(msg.contains("boot.kernel") && msg.contains("nope"), "{msg}");
}

#[test]
fn upper_case_disk_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "root.img", &pattern(4096, 6));
    let spec = load(
        dir.path(),
        "name = \"t4\"\nmemory_mib = 256\naccel = \"tcg\"\n[boot]\ndisk = \"Root\"\n\
         [[disk]]\nname = \"Root\"\npath = \"root.img\"\n",
    );
    let err = spec_params(&spec).unwrap_err();
    assert!(matches!(err, SpecParamError::Name { .. }), "{err}");
    assert!(err.to_string().contains("Root"), "{err}");
}
