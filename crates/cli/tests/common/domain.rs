//! Test domains of the test guest under a private libvirtd, with `virsh` as the oracle.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmattest_testkit::PrivateLibvirt;

use super::guest::{console_text, console_ticks, guest_dir, wait_tick};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// What a test domain looks like to its guest.
pub struct Shape {
    pub shared_ram: bool,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub mac: &'static str,
    /// The fresh disk's byte at offset 4096: another value is another disk.
    pub disk_byte: u8,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            shared_ram: true,
            memory_mib: 128,
            vcpus: 1,
            mac: "52:54:00:a7:00:01",
            disk_byte: 0,
        }
    }
}

/// A domain of the test guest: 128 MiB, one raw 4 MiB disk `vda`, one user-mode NIC, the
/// console in a file.
pub struct TestDomain<'a> {
    lv: &'a PrivateLibvirt,
    pub name: &'static str,
    console: PathBuf,
}

impl<'a> TestDomain<'a> {
    pub fn define(lv: &'a PrivateLibvirt, name: &'static str, shared_ram: bool) -> TestDomain<'a> {
        let shape = Shape {
            shared_ram,
            ..Shape::default()
        };
        TestDomain::define_as(lv, name, &shape)
    }

    pub fn define_as(lv: &'a PrivateLibvirt, name: &'static str, shape: &Shape) -> TestDomain<'a> {
        let shared_ram = shape.shared_ram;
        let dir = lv.vm_dir();
        let guest = guest_dir();
        for f in ["vmlinuz", "initramfs.cpio.gz"] {
            let to = dir.join(f);
            if !to.exists() {
                std::fs::copy(guest.join(f), &to).unwrap();
                lv.give(&to).unwrap();
            }
        }
        let disk = dir.join(format!("{name}-vda.raw"));
        let mut bytes = vec![0u8; 4 << 20];
        bytes[4096] = shape.disk_byte;
        std::fs::write(&disk, bytes).unwrap();
        lv.give(&disk).unwrap();
        let console = dir.join(format!("{name}-console.log"));
        let backing = if shared_ram {
            "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"
        } else {
            ""
        };
        let xml = format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  {backing}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{dir}/vmlinuz</kernel>
    <initrd>{dir}/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><mac address='{mac}'/><model type='virtio'/></interface>
    <serial type='file'><source path='{console}' append='off'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>",
            dir = dir.display(),
            disk = disk.display(),
            console = console.display(),
            memory = shape.memory_mib,
            vcpus = shape.vcpus,
            mac = shape.mac,
        );
        let path = dir.join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        lv.virsh_ok(&["define", path.to_str().unwrap()]);
        TestDomain { lv, name, console }
    }

    /// A handle on a domain defined earlier.
    pub fn of(lv: &'a PrivateLibvirt, name: &'static str) -> TestDomain<'a> {
        let console = lv.vm_dir().join(format!("{name}-console.log"));
        TestDomain { lv, name, console }
    }

    pub fn start(&self) {
        self.lv.virsh_ok(&["start", self.name]);
        let t = Instant::now();
        while !self.console_text().contains("READY") {
            assert!(
                t.elapsed() < BOOT_TIMEOUT,
                "no READY: {}",
                self.console_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn console_text(&self) -> String {
        console_text(&self.console)
    }

    /// Waits for a tick newer than the last one seen, and returns it.
    pub fn next_tick(&self) -> u64 {
        let before = console_ticks(&self.console).last().copied();
        wait_tick(&self.console, before, BOOT_TIMEOUT)
    }

    pub fn state(&self) -> String {
        self.lv.virsh_ok(&["domstate", self.name])
    }

    pub fn id(&self) -> String {
        self.lv.virsh_ok(&["domid", self.name])
    }

    /// After a restore to a capture whose disk holds block `tick`, the guest's first tick (on
    /// the console libvirt opened anew) is `tick` or `tick + 1`.
    pub fn continues_from(&self, tick: u64) {
        wait_tick(&self.console, None, BOOT_TIMEOUT);
        let first = console_ticks(&self.console).first().copied();
        assert!(
            first == Some(tick) || first == Some(tick + 1),
            "{} should continue at tick {tick} or {}, not {first:?}: {}",
            self.name,
            tick + 1,
            self.console_text()
        );
    }

    /// One field of `virsh dominfo`.
    pub fn info(&self, field: &str) -> String {
        let out = self.lv.virsh_ok(&["dominfo", self.name]);
        out.lines()
            .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
            .unwrap_or_else(|| panic!("no {field} in {out}"))
            .trim()
            .to_owned()
    }
}
