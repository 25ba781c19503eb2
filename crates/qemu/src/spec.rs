//! VM specs: a small TOML file describing one VM, validated and resolved once, then turned into
//! a QEMU command line and a canonical "config" component.

use std::io::Read;
use std::path::{Path, PathBuf};
use vmattest_core::class::{Classify, ErrorClass};

use serde::Deserialize;

use fields::{check_name, in_range, kvm_usable, parse_mac, toml_error};

mod args;
pub use args::{GuestBoot, GuestConfig};
mod fields;

/// Largest spec file accepted.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;
/// Longest Unix socket path the kernel accepts (sun_path without its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// QEMU block node names hold at most 31 bytes, and disks get a "-file" child node.
const MAX_DISK_NAME: usize = 26;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("spec {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spec {path}: {found} bytes, expected at most {max}")]
    TooLarge { path: PathBuf, max: u64, found: u64 },
    #[error("spec {path}: not UTF-8 text")]
    NotUtf8 { path: PathBuf },
    #[error("spec {path}: line {line}: {detail}")]
    Syntax {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("spec {path}: {field}: {detail}")]
    Invalid {
        path: PathBuf,
        field: String,
        detail: String,
    },
}

impl Classify for SpecError {
    fn class(&self) -> ErrorClass {
        match self {
            SpecError::Io { source, .. } if source.kind() != std::io::ErrorKind::NotFound => {
                ErrorClass::Environment
            }
            _ => ErrorClass::Input,
        }
    }
}

/// The accelerator asked for; `Auto` picks KVM only where a stock guest kernel can run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Tcg,
    Kvm,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: Option<String>,
    },
    /// Firmware boots the named disk.
    Disk(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub path: PathBuf,
    pub format: DiskFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Lower-case, colon-separated.
    pub mac: String,
    pub net: NicNet,
}

/// Where a NIC's packets go on the host. Not guest-visible (the `config` component leaves it
/// out, so a chain restores onto a host wired differently); the configuration measurement
/// names it (`nic.I.net`), so a launch gate can pin it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicNet {
    /// QEMU's user-mode network (the default).
    User,
    /// A port on this host bridge, made by QEMU's bridge helper (which reads
    /// `/etc/qemu/bridge.conf` for the bridges it may use).
    Bridge(String),
    /// This existing tap device; vmattest runs no scripts on it.
    Tap(String),
}

impl NicNet {
    /// `user`, `bridge:NAME` or `tap:NAME`: the value of `nic.I.net`.
    pub fn param(&self) -> String {
        match self {
            NicNet::User => "user".to_owned(),
            NicNet::Bridge(b) => format!("bridge:{b}"),
            NicNet::Tap(t) => format!("tap:{t}"),
        }
    }
}

/// A Linux interface name: 1 to 15 bytes of letters, digits, `_`, `.` and `-` (no `,`, `=` or
/// `/`, so it cannot add options to QEMU's `-netdev` or name a path).
pub fn check_ifname(name: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected an interface name of 1 to 15 letters, digits, '_', '.' or '-', found {name:?}"
        ))
    }
}

/// A validated VM spec with every path absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    source: PathBuf,
    name: String,
    memory_mib: u32,
    vcpus: u32,
    accel: Accel,
    kvm: bool,
    machine: String,
    qemu: String,
    run_dir: PathBuf,
    boot: Boot,
    disks: Vec<Disk>,
    nics: Vec<Nic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    memory_mib: i64,
    #[serde(default = "one")]
    vcpus: i64,
    #[serde(default)]
    accel: Accel,
    machine: Option<String>,
    qemu: Option<String>,
    run_dir: Option<String>,
    boot: RawBoot,
    #[serde(default)]
    disk: Vec<RawDisk>,
    #[serde(default)]
    nic: Vec<RawNic>,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoot {
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    disk: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    name: String,
    path: String,
    #[serde(default)]
    format: DiskFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNic {
    mac: String,
    bridge: Option<String>,
    tap: Option<String>,
}

impl VmSpec {
    /// Reads, validates and resolves the spec at `path`.
    pub fn load(path: &Path) -> Result<VmSpec, SpecError> {
        let io = |source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.take(MAX_SPEC_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_SPEC_BYTES {
            let found = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
            return Err(SpecError::TooLarge {
                path: path.to_path_buf(),
                max: MAX_SPEC_BYTES,
                found,
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| SpecError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = parent.canonicalize().map_err(io)?;
        VmSpec::parse(&text, path, &base)
    }

    /// Validates `text` as if read from `origin`; relative paths are resolved against `base`.
    pub fn parse(text: &str, origin: &Path, base: &Path) -> Result<VmSpec, SpecError> {
        let invalid = |field: &str, detail: String| SpecError::Invalid {
            path: origin.to_path_buf(),
            field: field.to_string(),
            detail,
        };
        let raw: RawSpec = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;

        check_name(&raw.name).map_err(|d| invalid("name", d))?;
        let memory_mib =
            in_range(raw.memory_mib, 16, 65536).map_err(|d| invalid("memory_mib", d))?;
        let vcpus = in_range(raw.vcpus, 1, 64).map_err(|d| invalid("vcpus", d))?;
        let machine = raw.machine.unwrap_or_else(|| "pc".to_string());
        if machine.is_empty()
            || !machine
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(invalid(
                "machine",
                format!("expected a QEMU machine type like \"pc\", found {machine:?}"),
            ));
        }
        let resolve = |field: &str, value: &str| -> Result<PathBuf, SpecError> {
            if value.is_empty() || value.contains(['\0', '\n']) {
                return Err(invalid(field, format!("not a usable path: {value:?}")));
            }
            let p = base.join(value);
            if p.to_str().is_none() {
                return Err(invalid(field, format!("{} is not UTF-8", p.display())));
            }
            Ok(p)
        };
        let qemu = match raw.qemu {
            None => "qemu-system-x86_64".to_string(),
            // A bare program name is looked up in PATH; anything with a slash is a path.
            Some(q) if !q.is_empty() && !q.contains('/') && !q.contains('\0') => q,
            Some(q) => resolve("qemu", &q)?.to_string_lossy().into_owned(),
        };
        let run_dir = match raw.run_dir {
            Some(d) => resolve("run_dir", &d)?,
            None => resolve("run_dir", &format!("run/{}", raw.name))?,
        };
        let socket_len = run_dir.join("qmp.sock").as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(invalid(
                "run_dir",
                format!("qmp.sock path would be {socket_len} bytes, at most {MAX_SOCKET_PATH}"),
            ));
        }

        let mut disks: Vec<Disk> = Vec::new();
        for (i, d) in raw.disk.iter().enumerate() {
            let field = |f: &str| format!("disk[{i}].{f}");
            check_name(&d.name).map_err(|e| invalid(&field("name"), e))?;
            if !d.name.starts_with(|c: char| c.is_ascii_alphabetic())
                || d.name.len() > MAX_DISK_NAME
            {
                return Err(invalid(
                    &field("name"),
                    format!(
                        "QEMU node names start with a letter and disk names are at most \
                         {MAX_DISK_NAME} bytes, found {:?}",
                        d.name
                    ),
                ));
            }
            if disks.iter().any(|o| o.name == d.name) {
                return Err(invalid(
                    &field("name"),
                    format!("duplicate disk {:?}", d.name),
                ));
            }
            disks.push(Disk {
                name: d.name.clone(),
                path: resolve(&field("path"), &d.path)?,
                format: d.format,
            });
        }

        let mut nics: Vec<Nic> = Vec::new();
        for (i, n) in raw.nic.iter().enumerate() {
            let field = format!("nic[{i}].mac");
            let mac = parse_mac(&n.mac).map_err(|d| invalid(&field, d))?;
            if nics.iter().any(|o| o.mac == mac) {
                return Err(invalid(&field, format!("duplicate MAC {mac}")));
            }
            let net = match (&n.bridge, &n.tap) {
                (None, None) => NicNet::User,
                (Some(b), None) => {
                    check_ifname(b).map_err(|d| invalid(&format!("nic[{i}].bridge"), d))?;
                    NicNet::Bridge(b.clone())
                }
                (None, Some(t)) => {
                    check_ifname(t).map_err(|d| invalid(&format!("nic[{i}].tap"), d))?;
                    NicNet::Tap(t.clone())
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &format!("nic[{i}]"),
                        "expected at most one of bridge and tap, found both".to_owned(),
                    ));
                }
            };
            nics.push(Nic { mac, net });
        }

        let b = raw.boot;
        let boot = match (b.kernel, b.disk) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "boot",
                    "kernel and disk are mutually exclusive".to_string(),
                ));
            }
            (None, None) => {
                return Err(invalid("boot", "expected kernel or disk".to_string()));
            }
            (Some(kernel), None) => Boot::Kernel {
                kernel: resolve("boot.kernel", &kernel)?,
                initrd: b.initrd.map(|i| resolve("boot.initrd", &i)).transpose()?,
                cmdline: b.cmdline,
            },
            (None, Some(disk)) => {
                if b.initrd.is_some() || b.cmdline.is_some() {
                    let f = if b.initrd.is_some() {
                        "boot.initrd"
                    } else {
                        "boot.cmdline"
                    };
                    return Err(invalid(f, "only allowed with boot.kernel".to_string()));
                }
                if !disks.iter().any(|d| d.name == disk) {
                    return Err(invalid("boot.disk", format!("no [[disk]] named {disk:?}")));
                }
                Boot::Disk(disk)
            }
        };

        Ok(VmSpec {
            source: origin.to_path_buf(),
            name: raw.name,
            memory_mib,
            vcpus,
            accel: raw.accel,
            kvm: match raw.accel {
                Accel::Auto => kvm_usable(),
                Accel::Tcg => false,
                Accel::Kvm => true,
            },
            machine,
            qemu,
            run_dir,
            boot,
            disks,
            nics,
        })
    }

    pub fn source(&self) -> &Path {
        &self.source
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn memory_mib(&self) -> u32 {
        self.memory_mib
    }
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }
    /// The accelerator as written in the spec.
    pub fn accel(&self) -> Accel {
        self.accel
    }
    /// The accelerator QEMU gets: "tcg" or "kvm", decided once at load.
    pub fn effective_accel(&self) -> &'static str {
        if self.kvm { "kvm" } else { "tcg" }
    }
    pub fn machine(&self) -> &str {
        &self.machine
    }
    pub fn qemu(&self) -> &str {
        &self.qemu
    }
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
    pub fn boot(&self) -> &Boot {
        &self.boot
    }
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }
    pub fn nics(&self) -> &[Nic] {
        &self.nics
    }
    pub fn ram_path(&self) -> PathBuf {
        self.run_dir.join("ram")
    }
    pub fn qmp_path(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }
    pub fn console_path(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.run_dir.join("qemu.pid")
    }
    pub fn err_path(&self) -> PathBuf {
        self.run_dir.join("qemu.err")
    }
}
