//! Rolling a VM back to (or migrating it to) a verified point of its chain.
//!
//! Everything is rebuilt and verified in a staging directory before the running VM is touched:
//! a chain that fails verification leaves the VM as it was. Then QEMU is stopped, RAM and disks
//! are moved into place, and a new QEMU started from the same spec with `-incoming` loads the
//! device state and continues.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmattest_store::{ReplayOptions, Store, Verified};

use crate::capture::{CONFIG, CaptureError, DEVICE_STATE, RAM, io};
use crate::qmp::Monitor;
use crate::spec::{Disk, DiskFormat, VmSpec};

const INCOMING_TIMEOUT: Duration = Duration::from_secs(120);

/// What a restore did, with its timings.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub verified: Verified,
    /// Verifying the chain and rebuilding every component.
    pub rebuild: Duration,
    /// From stopping the old QEMU to the new one running.
    pub switch: Duration,
}

/// Verifies the chain up to `opts.upto`, then replaces the VM's state with it and resumes.
pub fn restore(
    spec: &VmSpec,
    store: &Store,
    opts: &ReplayOptions<'_>,
) -> Result<RestoreReport, CaptureError> {
    // The staging directory receives guest RAM and disks: it lives in the 0700 run dir.
    crate::private::dir(spec.run_dir()).map_err(io(spec.run_dir()))?;
    let staging = spec
        .run_dir()
        .join(format!(".restore.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let t = Instant::now();
    let verified = store.restore(opts, &staging)?;
    let result = (|| {
        check_shape(
            spec.name(),
            spec.disks(),
            &spec.config_bytes(),
            &verified,
            &staging,
        )?;
        let rebuild = t.elapsed();
        let t = Instant::now();
        crate::vm::stop(spec).map_err(|error| CaptureError::Stop {
            vm: spec.name().to_owned(),
            error: Box::new(error),
        })?;
        place(&staging.join(RAM), &spec.ram_path())?;
        crate::private::file(&spec.ram_path()).map_err(io(&spec.ram_path()))?;
        place_disks(spec.name(), spec.disks(), &staging)?;
        let mut running =
            crate::vm::start(spec, true).map_err(|e| CaptureError::Start(Box::new(e)))?;
        let qmp = &mut running.qmp;
        load_device_state(qmp, spec.name(), &staging.join(DEVICE_STATE))?;
        qmp.cont().map_err(|source| CaptureError::Qmp {
            vm: spec.name().to_owned(),
            source,
        })?;
        Ok(RestoreReport {
            verified: verified.clone(),
            rebuild,
            switch: t.elapsed(),
        })
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The chain must hold this guest: the same components (`ram`, the disks, `device-state`,
/// `config`) and the same guest-visible config, byte for byte.
pub fn check_shape(
    vm: &str,
    disks: &[Disk],
    config: &[u8],
    v: &Verified,
    staging: &Path,
) -> Result<(), CaptureError> {
    let mut want: Vec<&str> = vec![RAM];
    want.extend(disks.iter().map(|d| d.name.as_str()));
    want.extend([DEVICE_STATE, CONFIG]);
    let have: Vec<&str> = v.components.iter().map(|c| c.name.as_str()).collect();
    if have != want {
        return Err(CaptureError::Vm {
            vm: vm.to_owned(),
            detail: format!(
                "seq {}: the chain holds components [{}], this VM has [{}]",
                v.seq,
                have.join(", "),
                want.join(", ")
            ),
        });
    }
    let path = staging.join(CONFIG);
    let chain = std::fs::read(&path).map_err(io(&path))?;
    if chain != config {
        return Err(CaptureError::Vm {
            vm: vm.to_owned(),
            detail: format!(
                "seq {}: the chain's guest config {} differs from this VM's {}; refusing to restore",
                v.seq,
                String::from_utf8_lossy(&chain),
                String::from_utf8_lossy(config)
            ),
        });
    }
    Ok(())
}

/// Puts each rebuilt disk in `staging` in place of the VM's disk, keeping the mode and owner
/// its file had (QEMU may run as another user); a disk that did not exist becomes 0600.
pub fn place_disks(vm: &str, disks: &[Disk], staging: &Path) -> Result<(), CaptureError> {
    use std::os::unix::fs::MetadataExt as _;
    for d in disks {
        let from = staging.join(&d.name);
        let old = std::fs::metadata(&d.path).ok();
        let mode = old
            .as_ref()
            .map_or(0o600, |m| m.permissions().mode() & 0o7777);
        std::fs::set_permissions(&from, Permissions::from_mode(mode)).map_err(io(&from))?;
        match d.format {
            DiskFormat::Raw => place(&from, &d.path)?,
            DiskFormat::Qcow2 => {
                crate::img::from_raw(&from, &d.path).map_err(|detail| CaptureError::Disk {
                    vm: vm.to_owned(),
                    disk: d.name.clone(),
                    detail,
                })?
            }
        }
        if let Some(m) = &old {
            keep_owner(&d.path, m.uid(), m.gid())?;
        }
    }
    Ok(())
}

/// Loads the device state file into a QEMU started with `-incoming defer` whose RAM already
/// holds the restored guest, and waits until it is paused, ready to run. A paused capture's
/// stream leaves shared RAM out (`x-ignore-shared`); a live capture's lists every block but
/// holds no page of guest RAM, which the load therefore leaves as the file has it.
pub fn load_device_state(mon: &mut dyn Monitor, vm: &str, dev: &Path) -> Result<(), CaptureError> {
    let qmp_err = |source| CaptureError::Qmp {
        vm: vm.to_owned(),
        source,
    };
    let file = std::fs::File::open(dev).map_err(io(dev))?;
    let caps = crate::stream::capabilities(std::io::BufReader::new(file)).map_err(|e| {
        CaptureError::Vm {
            vm: vm.to_owned(),
            detail: format!("{}: {e}", dev.display()),
        }
    })?;
    let ignore_shared = caps.iter().any(|c| c == "x-ignore-shared");
    mon.set_capabilities(&[("x-ignore-shared", ignore_shared)])
        .map_err(qmp_err)?;
    mon.migrate_incoming_file(dev).map_err(qmp_err)?;
    mon.wait_status("paused", INCOMING_TIMEOUT).map_err(qmp_err)
}

/// Gives a placed file back to the owner the old one had, when that differs.
fn keep_owner(path: &Path, uid: u32, gid: u32) -> Result<(), CaptureError> {
    use std::os::unix::fs::MetadataExt as _;
    let now = std::fs::metadata(path).map_err(io(path))?;
    if (now.uid(), now.gid()) == (uid, gid) {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(path))
}

/// Moves a rebuilt file into place, copying when it crosses file systems.
pub fn place(from: &Path, to: &Path) -> Result<(), CaptureError> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let tmp: PathBuf = to.with_extension("vmattest-restore");
    std::fs::copy(from, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io(to))
}
