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
use crate::qmp::Monitor as _;
use crate::spec::{DiskFormat, VmSpec};

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
        check_shape(spec, &verified, &staging)?;
        let rebuild = t.elapsed();
        let t = Instant::now();
        crate::vm::stop(spec).map_err(|error| CaptureError::Stop {
            vm: spec.name().to_owned(),
            error: Box::new(error),
        })?;
        place(&staging.join(RAM), &spec.ram_path())?;
        crate::private::file(&spec.ram_path()).map_err(io(&spec.ram_path()))?;
        for d in spec.disks() {
            let from = staging.join(&d.name);
            // A rebuilt disk keeps the mode its file had; a new one is 0600.
            let mode =
                std::fs::metadata(&d.path).map_or(0o600, |m| m.permissions().mode() & 0o7777);
            std::fs::set_permissions(&from, Permissions::from_mode(mode)).map_err(io(&from))?;
            match d.format {
                DiskFormat::Raw => place(&from, &d.path)?,
                DiskFormat::Qcow2 => {
                    crate::img::from_raw(&from, &d.path).map_err(|detail| CaptureError::Disk {
                        vm: spec.name().to_owned(),
                        disk: d.name.clone(),
                        detail,
                    })?
                }
            }
        }
        let dev = staging.join(DEVICE_STATE);
        let mut running =
            crate::vm::start(spec, true).map_err(|e| CaptureError::Start(Box::new(e)))?;
        let qmp_err = |source| CaptureError::Qmp {
            vm: spec.name().to_owned(),
            source,
        };
        let qmp = &mut running.qmp;
        qmp.set_capabilities(&[("x-ignore-shared", true)])
            .map_err(qmp_err)?;
        qmp.migrate_incoming_file(&dev).map_err(qmp_err)?;
        qmp.wait_status("paused", INCOMING_TIMEOUT)
            .map_err(qmp_err)?;
        qmp.cont().map_err(qmp_err)?;
        Ok(RestoreReport {
            verified: verified.clone(),
            rebuild,
            switch: t.elapsed(),
        })
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The chain must hold this spec's guest: same components, same guest-visible config.
fn check_shape(spec: &VmSpec, v: &Verified, staging: &Path) -> Result<(), CaptureError> {
    let mut want: Vec<&str> = vec![RAM];
    want.extend(spec.disks().iter().map(|d| d.name.as_str()));
    want.extend([DEVICE_STATE, CONFIG]);
    let have: Vec<&str> = v.components.iter().map(|c| c.name.as_str()).collect();
    if have != want {
        return Err(CaptureError::Vm {
            vm: spec.name().to_owned(),
            detail: format!(
                "seq {}: the chain holds components [{}], the spec expects [{}]",
                v.seq,
                have.join(", "),
                want.join(", ")
            ),
        });
    }
    let path = staging.join(CONFIG);
    let chain = std::fs::read(&path).map_err(io(&path))?;
    let ours = spec.config_bytes();
    if chain != ours {
        return Err(CaptureError::Vm {
            vm: spec.name().to_owned(),
            detail: format!(
                "seq {}: the chain's guest config {} differs from the spec's {}; refusing to restore",
                v.seq,
                String::from_utf8_lossy(&chain),
                String::from_utf8_lossy(&ours)
            ),
        });
    }
    Ok(())
}

/// Moves a rebuilt file into place, copying when it crosses file systems.
fn place(from: &Path, to: &Path) -> Result<(), CaptureError> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let tmp: PathBuf = to.with_extension("vmattest-restore");
    std::fs::copy(from, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io(to))
}
