//! The QEMU command line and the canonical config of a spec.

use std::path::Path;

use super::{Boot, NicNet, VmSpec};

impl VmSpec {
    /// QEMU's arguments, without the binary. A fresh start and an incoming start differ only
    /// in the trailing `-incoming defer`: migration needs the same machine on both sides.
    pub fn command_line(&self, incoming: bool) -> Vec<String> {
        let mem = format!("{}M", self.memory_mib);
        let mut args: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-machine".into(),
            format!("{},memory-backend=ram0", self.machine),
            "-accel".into(),
            self.effective_accel().into(),
            "-m".into(),
            mem.clone(),
            "-smp".into(),
            self.vcpus.to_string(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-object".into(),
            format!(
                "memory-backend-file,id=ram0,size={mem},mem-path={},share=on",
                opt_path(&self.ram_path())
            ),
            "-chardev".into(),
            format!("file,id=ser0,path={}", opt_path(&self.console_path())),
            "-serial".into(),
            "chardev:ser0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", opt_path(&self.qmp_path())),
            // -pidfile, -kernel and -initrd take their argument verbatim: no escaping.
            "-pidfile".into(),
            raw_path(&self.pid_path()),
            "-daemonize".into(),
        ];
        let boot_disk = match &self.boot {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                args.extend(["-kernel".into(), raw_path(kernel)]);
                if let Some(initrd) = initrd {
                    args.extend(["-initrd".into(), raw_path(initrd)]);
                }
                if let Some(cmdline) = cmdline {
                    args.extend(["-append".into(), cmdline.clone()]);
                }
                args.push("-no-reboot".into());
                None
            }
            Boot::Disk(name) => Some(name.as_str()),
        };
        for d in &self.disks {
            let n = &d.name;
            args.push("-blockdev".into());
            args.push(format!(
                "driver=file,filename={},node-name={n}-file",
                opt_path(&d.path)
            ));
            args.push("-blockdev".into());
            args.push(format!(
                "driver={},file={n}-file,node-name={n}",
                d.format.as_str()
            ));
            args.push("-device".into());
            let boot = if boot_disk == Some(n.as_str()) {
                ",bootindex=1"
            } else {
                ""
            };
            args.push(format!("virtio-blk-pci,drive={n},id={n}-dev{boot}"));
        }
        for (i, nic) in self.nics.iter().enumerate() {
            args.push("-netdev".into());
            args.push(match &nic.net {
                NicNet::User => format!("user,id=net{i}"),
                NicNet::Bridge(br) => format!("bridge,id=net{i},br={br}"),
                NicNet::Tap(tap) => {
                    format!("tap,id=net{i},ifname={tap},script=no,downscript=no")
                }
            });
            args.push("-device".into());
            args.push(format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac));
        }
        if incoming {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        args
    }

    /// The settings the guest can observe, as canonical JSON (keys sorted): the chain's
    /// `config` component. Host paths, the VM's name, the accelerator and the QEMU binary are
    /// left out, so the same guest restores under another spec on another host.
    pub fn config_bytes(&self) -> Vec<u8> {
        let boot = match &self.boot {
            Boot::Kernel { cmdline, .. } => GuestBoot::Kernel {
                cmdline: cmdline.as_deref(),
            },
            Boot::Disk(disk) => GuestBoot::Disk(disk),
        };
        GuestConfig {
            boot,
            disks: self
                .disks
                .iter()
                .map(|d| (d.name.as_str(), d.format.as_str()))
                .collect(),
            machine: &self.machine,
            memory_mib: u64::from(self.memory_mib),
            macs: self.nics.iter().map(|n| n.mac.as_str()).collect(),
            vcpus: self.vcpus,
        }
        .bytes()
    }
}

/// What a guest can observe of its VM, whoever runs it (a spec, a libvirt domain): the
/// chain's `config` component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig<'a> {
    pub boot: GuestBoot<'a>,
    /// `(name, format)` of each disk.
    pub disks: Vec<(&'a str, &'a str)>,
    pub machine: &'a str,
    pub memory_mib: u64,
    pub macs: Vec<&'a str>,
    pub vcpus: u32,
}

/// How the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestBoot<'a> {
    /// Direct kernel boot, with its command line.
    Kernel { cmdline: Option<&'a str> },
    /// Firmware boot from this disk.
    Disk(&'a str),
    /// Firmware boot in the firmware's own order.
    Firmware,
}

impl GuestConfig<'_> {
    /// Canonical JSON, keys sorted.
    pub fn bytes(&self) -> Vec<u8> {
        let boot = match self.boot {
            GuestBoot::Kernel { cmdline } => {
                serde_json::json!({ "cmdline": cmdline, "kernel": true })
            }
            GuestBoot::Disk(disk) => serde_json::json!({ "disk": disk }),
            GuestBoot::Firmware => serde_json::json!({ "firmware": true }),
        };
        let disks: Vec<serde_json::Value> = self
            .disks
            .iter()
            .map(|(name, format)| serde_json::json!({ "format": format, "name": name }))
            .collect();
        let nics: Vec<serde_json::Value> = self
            .macs
            .iter()
            .map(|mac| serde_json::json!({ "mac": mac }))
            .collect();
        // Keys are written in sorted order, which keeps the output sorted even if some crate
        // in the build enables serde_json's preserve_order.
        let value = serde_json::json!({
            "boot": boot,
            "disks": disks,
            "format": "vmattest-vm-config/1",
            "machine": self.machine,
            "memory_mib": self.memory_mib,
            "nics": nics,
            "vcpus": self.vcpus,
        });
        value.to_string().into_bytes()
    }
}

/// Paths were checked to be UTF-8 at load.
fn raw_path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A path inside a QEMU `key=value,...` option, where a literal comma is written twice.
fn opt_path(p: &Path) -> String {
    raw_path(p).replace(',', ",,")
}
