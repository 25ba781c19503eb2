//! QMP through libvirt's monitor passthrough. File descriptors travel with the command
//! (`getfd`), so QEMU writes into files vmattest opened, whatever user QEMU runs as.

use std::ffi::{CStr, c_int, c_uint};
use std::os::fd::AsRawFd as _;
use std::path::Path;

use serde_json::{Value, json};
use vmattest_qemu::qmp::{Monitor, QmpError};

use crate::{Domain, c_string, ffi, last_error};

/// Name under which QEMU holds the device state file while it migrates into or out of it.
const FD_NAME: &str = "vmattest-device-state";

/// A QMP session with a domain's QEMU, through libvirt.
#[derive(Debug)]
pub struct DomainMonitor<'d, 'c> {
    domain: &'d Domain<'c>,
}

impl<'d, 'c> DomainMonitor<'d, 'c> {
    pub fn new(domain: &'d Domain<'c>) -> Self {
        DomainMonitor { domain }
    }

    fn command(&mut self, cmd: &str, args: Value, fd: Option<c_int>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": cmd });
        if !args.is_null() {
            request["arguments"] = args;
        }
        let text = c_string("QMP command", &request.to_string())
            .map_err(|e| QmpError::Argument(e.to_string()))?;
        let mut fds: Vec<c_int> = fd.into_iter().collect();
        let mut result: *mut std::ffi::c_char = std::ptr::null_mut();
        let mut nout: c_uint = 0;
        let mut outfiles: *mut c_int = std::ptr::null_mut();
        let n = c_uint::try_from(fds.len()).unwrap_or(0);
        // SAFETY: the domain pointer is live for `'d`; `text` is NUL-terminated; `fds` holds
        // `n` open descriptors that libvirt only reads (it sends duplicates); the out-pointers
        // point at locals. libvirt allocates `result` (freed below) and, for commands that
        // return files, `outfiles` (none of ours do; freed below all the same).
        let r = unsafe {
            ffi::virDomainQemuMonitorCommandWithFiles(
                self.domain.raw(),
                text.as_ptr(),
                n,
                if fds.is_empty() {
                    std::ptr::null_mut()
                } else {
                    fds.as_mut_ptr()
                },
                &mut nout,
                &mut outfiles,
                &mut result,
                0,
            )
        };
        if !outfiles.is_null() {
            // SAFETY: allocated by libvirt for this call and not used otherwise.
            unsafe { ffi::free(outfiles.cast()) };
        }
        if r < 0 {
            return Err(QmpError::Passthrough {
                via: "libvirt",
                detail: last_error(),
            });
        }
        if result.is_null() {
            return Err(QmpError::Protocol(format!(
                "{cmd}: libvirt returned no reply"
            )));
        }
        // SAFETY: non-null and NUL-terminated (libvirt's reply text); copied, then freed once.
        let reply = unsafe { CStr::from_ptr(result) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: `result` came from libvirt's allocator and is not used afterwards.
        unsafe { ffi::free(result.cast()) };
        let mut body: Value = serde_json::from_str(&reply)
            .map_err(|e| QmpError::Protocol(format!("{cmd}: reply is not JSON: {e}")))?;
        if let Some(err) = body.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("");
            return Err(QmpError::Qemu {
                cmd: cmd.to_owned(),
                class: field("class").to_owned(),
                desc: field("desc").to_owned(),
            });
        }
        match body.get_mut("return") {
            Some(ret) => Ok(ret.take()),
            None => Err(QmpError::Protocol(format!("{cmd}: reply has no return"))),
        }
    }
}

impl DomainMonitor<'_, '_> {
    /// Gives QEMU its own descriptor of `file`, named [`FD_NAME`] (libvirt sends a duplicate).
    fn hand_over(&mut self, file: &std::fs::File) -> Result<(), QmpError> {
        self.command(
            "getfd",
            json!({ "fdname": FD_NAME }),
            Some(file.as_raw_fd()),
        )
        .map(drop)
    }
}

impl Monitor for DomainMonitor<'_, '_> {
    fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        self.command(cmd, args, None)
    }

    /// QEMU may run as another user, and libvirt forbids `exec:`: the file is opened here and
    /// handed over as a descriptor.
    fn migrate_to_file(&mut self, path: &Path) -> Result<(), QmpError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        self.hand_over(&file)?;
        let uri = format!("fd:{FD_NAME}");
        self.execute("migrate", json!({ "uri": uri })).map(drop)
    }

    /// The same the other way: QEMU reads the file vmattest opened.
    fn migrate_incoming_file(&mut self, path: &Path) -> Result<(), QmpError> {
        self.hand_over(&std::fs::File::open(path)?)?;
        self.migrate_incoming(&format!("fd:{FD_NAME}"))
    }
}
