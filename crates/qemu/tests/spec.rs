//! Spec parsing and the QEMU command line; no QEMU runs here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::path::PathBuf;

use serde_json::Value;
use vmattest_qemu::VmSpec;
use vmattest_qemu::spec::SpecError;

fn spec_error(text: &str) -> (PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.toml");
    std::fs::write(&path, text).unwrap();
    let err = VmSpec::load(&path).unwrap_err();
    assert!(matches!(err, SpecError::Invalid { .. }), "{err:?}");
    (path, err.to_string())
}

const KERNEL_BOOT: &str = "[boot]\nkernel = \"vmlinuz\"\n";

#[test]
fn spec_errors_name_the_field() {
    let (path, msg) = spec_error(&format!("name = \"a\"\nmemory_mib = 8\n{KERNEL_BOOT}"));
    assert_eq!(
        msg,
        format!(
            "spec {}: memory_mib: expected 16 to 65536, found 8",
            path.display()
        )
    );
    let cases = [
        (
            format!("name = \"a\"\nmemory_mib = 64\nbogus = 1\n{KERNEL_BOOT}"),
            ": bogus: unknown field `bogus`",
        ),
        (
            format!("name = \"a\"\nmemory_mib = 64\n{KERNEL_BOOT}colour = \"red\"\n"),
            ": boot.colour: unknown field `colour`",
        ),
        (
            format!("name = \"a b\"\nmemory_mib = 64\n{KERNEL_BOOT}"),
            ": name: expected 1 to 64 of [A-Za-z0-9._-]",
        ),
        (
            format!("name = \".hidden\"\nmemory_mib = 64\n{KERNEL_BOOT}"),
            ": name: expected",
        ),
        (
            format!(
                "name = \"{}\"\nmemory_mib = 64\n{KERNEL_BOOT}",
                "x".repeat(65)
            ),
            ": name: expected",
        ),
        (
            format!("name = \"a\"\nmemory_mib = 65537\n{KERNEL_BOOT}"),
            ": memory_mib: expected 16 to 65536, found 65537",
        ),
        (
            format!("name = \"a\"\nmemory_mib = 64\nvcpus = 65\n{KERNEL_BOOT}"),
            ": vcpus: expected 1 to 64, found 65",
        ),
        (
            "name = \"a\"\nmemory_mib = 64\n[boot]\nkernel = \"k\"\ndisk = \"d0\"\n\
             [[disk]]\nname = \"d0\"\npath = \"d0.raw\"\n"
                .to_string(),
            ": boot: kernel and disk are mutually exclusive",
        ),
        (
            format!(
                "name = \"a\"\nmemory_mib = 64\n{KERNEL_BOOT}[[nic]]\nmac = \"52:54:00:12:34\"\n"
            ),
            ": nic[0].mac: expected six hex octets",
        ),
        (
            format!(
                "name = \"a\"\nmemory_mib = 64\n{KERNEL_BOOT}[[nic]]\nmac = \"01:54:00:12:34:56\"\n"
            ),
            ": nic[0].mac: 01:54:00:12:34:56 is a multicast address",
        ),
        (
            format!(
                "name = \"a\"\nmemory_mib = 64\n{KERNEL_BOOT}[[nic]]\nmac = \"52:54:00:12:34:56\"\n\
                 bridge = \"br0\"\ntap = \"tap0\"\n"
            ),
            ": nic[0]: expected at most one of bridge and tap, found both",
        ),
        (
            // A comma would add options to QEMU's -netdev.
            format!(
                "name = \"a\"\nmemory_mib = 64\n{KERNEL_BOOT}[[nic]]\nmac = \"52:54:00:12:34:56\"\n\
                 tap = \"t0,script=/bin/x\"\n"
            ),
            ": nic[0].tap: expected an interface name of 1 to 15 letters",
        ),
        (
            format!(
                "name = \"a\"\nmemory_mib = 64\n{KERNEL_BOOT}[[nic]]\nmac = \"52:54:00:12:34:56\"\n\
                 bridge = \"a-bridge-name-too-long\"\n"
            ),
            ": nic[0].bridge: expected an interface name of 1 to 15 letters",
        ),
        (
            format!(
                "name = \"a\"\nmemory_mib = 64\n{KERNEL_BOOT}[[disk]]\nname = \"d0\"\npath = \"a\"\n\
                 [[disk]]\nname = \"d1\"\npath = \"b\"\nformat = \"vmdk\"\n"
            ),
            ": disk[1].format: unknown variant `vmdk`",
        ),
        (
            format!("name = \"a\"\n{KERNEL_BOOT}"),
            ": memory_mib: missing",
        ),
        (
            format!("name = \"a\"\nmemory_mib = \"lots\"\n{KERNEL_BOOT}"),
            ": memory_mib: invalid type",
        ),
    ];
    for (text, want) in cases {
        let (_, msg) = spec_error(&text);
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        assert!(!msg.contains('\n'), "one line: {msg:?}");
    }
}

#[test]
fn oversize_spec_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.toml");
    let mut text = format!("name = \"a\"\nmemory_mib = 64\n{KERNEL_BOOT}");
    text.push_str(&"#".repeat(1 << 20));
    std::fs::write(&path, &text).unwrap();
    let err = VmSpec::load(&path).unwrap_err();
    assert!(
        matches!(err, SpecError::TooLarge { found, .. } if found == text.len() as u64),
        "{err:?}"
    );
}

#[test]
fn command_line_differs_only_by_incoming() {
    let dir = tempfile::Builder::new()
        .prefix("spec,dir")
        .tempdir()
        .unwrap();
    let path = dir.path().join("vm.toml");
    std::fs::write(
        &path,
        "name = \"cl\"\nmemory_mib = 64\naccel = \"tcg\"\n[boot]\ndisk = \"sys\"\n\
         [[disk]]\nname = \"sys\"\npath = \"sys.qcow2\"\nformat = \"qcow2\"\n\
         [[disk]]\nname = \"data\"\npath = \"/abs/data.raw\"\n\
         [[nic]]\nmac = \"52:54:00:AA:BB:01\"\n\
         [[nic]]\nmac = \"52:54:00:AA:BB:02\"\nbridge = \"br0\"\n\
         [[nic]]\nmac = \"52:54:00:AA:BB:03\"\ntap = \"tap7\"\n",
    )
    .unwrap();
    let spec = VmSpec::load(&path).unwrap();
    let fresh = spec.command_line(false);
    let incoming = spec.command_line(true);
    assert_eq!(incoming[..fresh.len()], fresh[..]);
    assert_eq!(incoming[fresh.len()..], ["-incoming", "defer"]);

    let base = dir.path().canonicalize().unwrap();
    let base = base.to_str().unwrap();
    let escaped = base.replace(',', ",,");
    let joined = fresh.join(" ");
    assert!(joined.starts_with(
        "-name cl -machine pc,memory-backend=ram0 -accel tcg -m 64M -smp 1 -nodefaults \
         -display none -object memory-backend-file,id=ram0,size=64M,mem-path="
    ));
    assert!(joined.contains(&format!("mem-path={escaped}/run/cl/ram,share=on")));
    assert!(joined.contains(&format!("-pidfile {base}/run/cl/qemu.pid -daemonize")));
    assert!(joined.contains(&format!(
        "-blockdev driver=file,filename={escaped}/sys.qcow2,node-name=sys-file \
         -blockdev driver=qcow2,file=sys-file,node-name=sys \
         -device virtio-blk-pci,drive=sys,id=sys-dev,bootindex=1"
    )));
    assert!(joined.contains(
        "-blockdev driver=file,filename=/abs/data.raw,node-name=data-file \
         -blockdev driver=raw,file=data-file,node-name=data \
         -device virtio-blk-pci,drive=data,id=data-dev -netdev"
    ));
    assert!(joined.ends_with(
        "-netdev user,id=net0 -device virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01 \
         -netdev bridge,id=net1,br=br0 -device virtio-net-pci,netdev=net1,mac=52:54:00:aa:bb:02 \
         -netdev tap,id=net2,ifname=tap7,script=no,downscript=no \
         -device virtio-net-pci,netdev=net2,mac=52:54:00:aa:bb:03"
    ));
    assert!(!joined.contains("-kernel"));

    // The config is canonical JSON: sorted keys, stable across loads.
    let config = spec.config_bytes();
    assert_eq!(config, VmSpec::load(&path).unwrap().config_bytes());
    let value: Value = serde_json::from_slice(&config).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(value["disks"][0]["name"], "sys");
    assert!(!String::from_utf8(config).unwrap().contains(base));
}
