#![allow(unsafe_code)] // The FFI boundary: every unsafe block says why it holds.
//! libvirt domains: a connection, a domain handle, its state and XML, and QMP through
//! libvirt's monitor passthrough (`virDomainQemuMonitorCommandWithFiles`), so that a capture
//! drives a domain's QEMU exactly as it drives one vmattest started itself. libvirt keeps its
//! own view of the domain: the passthrough's `stop` and `cont` reach it as QEMU events.

mod capture;
mod ffi;
mod monitor;
mod restore;

use std::ffi::{CStr, CString, c_int};
use std::ptr::NonNull;
use std::sync::Once;

use vmattest_core::class::{Classify, ErrorClass};

pub use capture::{DomainError, LiveDomain, capture, resume_after_capture};
pub use monitor::DomainMonitor;
pub use restore::restore;

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("libvirt {uri}: cannot connect: {detail}")]
    Connect { uri: String, detail: String },
    #[error("libvirt {uri}: no domain {name:?}: {detail}")]
    NoDomain {
        uri: String,
        name: String,
        detail: String,
    },
    #[error("domain {domain}: {what}: {detail}")]
    Call {
        domain: String,
        what: &'static str,
        detail: String,
    },
    #[error("{what} {found:?}: expected text without NUL bytes")]
    Nul { what: &'static str, found: String },
}

impl Classify for LibvirtError {
    fn class(&self) -> ErrorClass {
        match self {
            LibvirtError::NoDomain { .. } | LibvirtError::Nul { .. } => ErrorClass::Input,
            LibvirtError::Connect { .. } | LibvirtError::Call { .. } => ErrorClass::Environment,
        }
    }
}

/// libvirt's message for the last failed call of this thread.
fn last_error() -> String {
    // SAFETY: virGetLastErrorMessage returns a pointer to a NUL-terminated string owned by
    // libvirt's thread-local error (never null: "no error" when there is none), valid until the
    // next libvirt call on this thread; it is copied at once.
    let msg = unsafe { CStr::from_ptr(ffi::virGetLastErrorMessage()) };
    msg.to_string_lossy().into_owned()
}

/// libvirt prints every error to stderr unless told otherwise; vmattest reports its own.
fn quiet() {
    static ONCE: Once = Once::new();
    unsafe extern "C" fn ignore(_: *mut std::ffi::c_void, _: *mut std::ffi::c_void) {}
    ONCE.call_once(|| {
        // SAFETY: installs a process-wide handler that does nothing with its arguments; libvirt
        // calls it with valid pointers or none at all.
        unsafe { ffi::virSetErrorFunc(std::ptr::null_mut(), Some(ignore)) }
    });
}

fn c_string(what: &'static str, s: &str) -> Result<CString, LibvirtError> {
    CString::new(s).map_err(|_| LibvirtError::Nul {
        what,
        found: s.to_owned(),
    })
}

/// A connection to a libvirt daemon (`qemu:///system` when no URI is given).
#[derive(Debug)]
pub struct Connection {
    ptr: NonNull<ffi::VirConnect>,
    uri: String,
}

// SAFETY: libvirt connections are thread-safe (libvirt serialises calls on a connection);
// the pointer is only freed by Drop.
#[allow(unsafe_code)]
unsafe impl Send for Connection {}

impl Connection {
    pub fn open(uri: Option<&str>) -> Result<Connection, LibvirtError> {
        quiet();
        let uri = uri.unwrap_or("qemu:///system").to_owned();
        let c = c_string("--connect", &uri)?;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call; a null result is
        // handled below.
        let ptr = unsafe { ffi::virConnectOpen(c.as_ptr()) };
        let ptr = NonNull::new(ptr).ok_or_else(|| LibvirtError::Connect {
            uri: uri.clone(),
            detail: last_error(),
        })?;
        Ok(Connection { ptr, uri })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The domain called `name`.
    pub fn domain(&self, name: &str) -> Result<Domain<'_>, LibvirtError> {
        let c = c_string("--domain", name)?;
        // SAFETY: the connection pointer is live (owned by `self`), `c` is NUL-terminated and
        // outlives the call; a null result is handled below.
        let ptr = unsafe { ffi::virDomainLookupByName(self.ptr.as_ptr(), c.as_ptr()) };
        self.own(ptr, name, || LibvirtError::NoDomain {
            uri: self.uri.clone(),
            name: name.to_owned(),
            detail: last_error(),
        })
    }

    /// The names of every domain, defined or running, sorted.
    pub fn domain_names(&self) -> Result<Vec<String>, LibvirtError> {
        let mut list: *mut *mut ffi::VirDomain = std::ptr::null_mut();
        // SAFETY: the connection pointer is live; libvirt stores a malloc'd array of `n`
        // domain pointers in `list`, each released below with virDomainFree, then the array
        // with free.
        let n = unsafe { ffi::virConnectListAllDomains(self.ptr.as_ptr(), &mut list, 0) };
        let count = usize::try_from(n).map_err(|_| LibvirtError::Connect {
            uri: self.uri.clone(),
            detail: format!("listing domains: {}", last_error()),
        })?;
        let mut names = Vec::with_capacity(count);
        for i in 0..count {
            // SAFETY: `list` holds `count` valid domain pointers (see above); each is read once.
            let d = unsafe { *list.add(i) };
            // SAFETY: `d` is a live domain; its name is a NUL-terminated string owned by the
            // domain object, copied before the domain is freed.
            let name = unsafe { ffi::virDomainGetName(d) };
            if !name.is_null() {
                // SAFETY: non-null and NUL-terminated (see above).
                names.push(
                    unsafe { CStr::from_ptr(name) }
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            // SAFETY: `d` came from the list and is not used afterwards.
            unsafe { ffi::virDomainFree(d) };
        }
        if !list.is_null() {
            // SAFETY: the array came from libvirt's allocator and is not used afterwards.
            unsafe { ffi::free(list.cast()) };
        }
        names.sort();
        Ok(names)
    }

    /// A domain handle libvirt returned (null: the call failed, `err` says how).
    fn own(
        &self,
        ptr: *mut ffi::VirDomain,
        name: &str,
        err: impl FnOnce() -> LibvirtError,
    ) -> Result<Domain<'_>, LibvirtError> {
        Ok(Domain {
            ptr: NonNull::new(ptr).ok_or_else(err)?,
            name: name.to_owned(),
            _conn: self,
        })
    }

    /// Starts a transient domain (or a defined one of the same name and UUID) from `xml`,
    /// with its vCPUs paused.
    pub fn create_paused(&self, name: &str, xml: &str) -> Result<Domain<'_>, LibvirtError> {
        let c = c_string("domain XML", xml)?;
        // SAFETY: the connection pointer is live, `c` is NUL-terminated and outlives the call;
        // a null result is handled below.
        let ptr =
            unsafe { ffi::virDomainCreateXML(self.ptr.as_ptr(), c.as_ptr(), ffi::START_PAUSED) };
        self.own(ptr, name, || LibvirtError::Call {
            domain: name.to_owned(),
            what: "start",
            detail: last_error(),
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: the pointer came from virConnectOpen and is closed exactly once, here; the
        // domains borrowing this connection are gone (their lifetime is tied to it).
        unsafe {
            ffi::virConnectClose(self.ptr.as_ptr());
        }
    }
}

/// What libvirt says a domain is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
    /// Any other libvirt state (blocked, shutting down, crashed, suspended by the guest).
    Other(i32),
}

impl DomainState {
    pub fn name(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::ShutOff => "shut off",
            DomainState::Other(_) => "other",
        }
    }
}

/// One domain of a connection.
#[derive(Debug)]
pub struct Domain<'c> {
    ptr: NonNull<ffi::VirDomain>,
    name: String,
    _conn: &'c Connection,
}

impl Domain<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn call_err(&self, what: &'static str) -> LibvirtError {
        LibvirtError::Call {
            domain: self.name.clone(),
            what,
            detail: last_error(),
        }
    }

    pub fn state(&self) -> Result<DomainState, LibvirtError> {
        let (mut state, mut reason): (c_int, c_int) = (0, 0);
        // SAFETY: the domain pointer is live (owned by `self`); both out-pointers point at
        // local integers.
        let r = unsafe { ffi::virDomainGetState(self.ptr.as_ptr(), &mut state, &mut reason, 0) };
        if r < 0 {
            return Err(self.call_err("state"));
        }
        Ok(match state {
            ffi::STATE_RUNNING => DomainState::Running,
            ffi::STATE_PAUSED => DomainState::Paused,
            ffi::STATE_SHUTOFF => DomainState::ShutOff,
            other => DomainState::Other(other),
        })
    }

    /// libvirt's id of the running domain (none when it is shut off).
    pub fn id(&self) -> Option<u32> {
        // SAFETY: the domain pointer is live; the call only reads it.
        let id = unsafe { ffi::virDomainGetID(self.ptr.as_ptr()) };
        (id != u32::MAX).then_some(id)
    }

    /// The live domain XML (the inactive definition when it is shut off).
    pub fn xml(&self) -> Result<String, LibvirtError> {
        self.xml_desc(0)
    }

    /// The definition a restart would use: the persistent one, else the live one without
    /// run-time ids, aliases and security labels.
    pub fn definition(&self) -> Result<String, LibvirtError> {
        self.xml_desc(ffi::XML_INACTIVE)
    }

    fn xml_desc(&self, flags: std::ffi::c_uint) -> Result<String, LibvirtError> {
        // SAFETY: the domain pointer is live; the result is a malloc'd NUL-terminated string
        // (or null on failure), copied and then freed exactly once.
        let ptr = unsafe { ffi::virDomainGetXMLDesc(self.ptr.as_ptr(), flags) };
        if ptr.is_null() {
            return Err(self.call_err("XML"));
        }
        // SAFETY: as above: non-null and NUL-terminated.
        let text = unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: `ptr` came from libvirt's allocator (malloc) and is not used afterwards.
        unsafe { ffi::free(ptr.cast()) };
        Ok(text)
    }

    /// Resumes a paused domain through libvirt.
    pub fn resume(&self) -> Result<(), LibvirtError> {
        // SAFETY: the domain pointer is live.
        let r = unsafe { ffi::virDomainResume(self.ptr.as_ptr()) };
        if r < 0 {
            return Err(self.call_err("resume"));
        }
        Ok(())
    }

    /// Stops the domain's QEMU at once (a defined domain stays defined).
    pub fn destroy(&self) -> Result<(), LibvirtError> {
        // SAFETY: the domain pointer is live.
        let r = unsafe { ffi::virDomainDestroy(self.ptr.as_ptr()) };
        if r < 0 {
            return Err(self.call_err("destroy"));
        }
        Ok(())
    }

    fn raw(&self) -> *mut ffi::VirDomain {
        self.ptr.as_ptr()
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from virDomainLookupByName and is freed exactly once, here,
        // while its connection is still open (the borrow guarantees it).
        unsafe {
            ffi::virDomainFree(self.ptr.as_ptr());
        }
    }
}
