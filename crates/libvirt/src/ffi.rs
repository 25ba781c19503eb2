//! The libvirt C API calls vmattest makes (libvirt.so and libvirt-qemu.so, stable ABI since
//! libvirt 7.2). Bound by hand: the `virt` crate pins libc to one exact old release, which
//! the rest of the workspace cannot use.

#[cfg(feature = "libvirt")]
use std::ffi::c_char;
use std::ffi::{c_int, c_uint, c_void};

#[repr(C)]
pub struct VirConnect {
    _opaque: [u8; 0],
}

#[repr(C)]
pub struct VirDomain {
    _opaque: [u8; 0],
}

pub type ErrorFunc = Option<unsafe extern "C" fn(user: *mut c_void, error: *mut c_void)>;

/// `VIR_DOMAIN_*` states of `virDomainGetState`.
pub const STATE_RUNNING: c_int = 1;
pub const STATE_PAUSED: c_int = 3;
pub const STATE_SHUTOFF: c_int = 5;
/// `VIR_DOMAIN_XML_INACTIVE`: the definition, without run-time ids and aliases.
pub const XML_INACTIVE: c_uint = 2;
/// `VIR_DOMAIN_START_PAUSED`.
pub const START_PAUSED: c_uint = 1;

#[cfg(feature = "libvirt")]
#[link(name = "virt")]
unsafe extern "C" {
    pub fn virConnectOpen(name: *const c_char) -> *mut VirConnect;
    pub fn virConnectClose(conn: *mut VirConnect) -> c_int;
    pub fn virDomainLookupByName(conn: *mut VirConnect, name: *const c_char) -> *mut VirDomain;
    pub fn virConnectListAllDomains(
        conn: *mut VirConnect,
        domains: *mut *mut *mut VirDomain,
        flags: c_uint,
    ) -> c_int;
    pub fn virDomainGetName(domain: *mut VirDomain) -> *const c_char;
    pub fn virDomainFree(domain: *mut VirDomain) -> c_int;
    pub fn virDomainGetState(
        domain: *mut VirDomain,
        state: *mut c_int,
        reason: *mut c_int,
        flags: c_uint,
    ) -> c_int;
    pub fn virDomainGetXMLDesc(domain: *mut VirDomain, flags: c_uint) -> *mut c_char;
    pub fn virDomainGetID(domain: *mut VirDomain) -> c_uint;
    pub fn virDomainResume(domain: *mut VirDomain) -> c_int;
    pub fn virDomainDestroy(domain: *mut VirDomain) -> c_int;
    pub fn virDomainCreateXML(
        conn: *mut VirConnect,
        xml: *const c_char,
        flags: c_uint,
    ) -> *mut VirDomain;
    pub fn virGetLastErrorMessage() -> *const c_char;
    pub fn virSetErrorFunc(user: *mut c_void, handler: ErrorFunc);
}

unsafe extern "C" {
    /// The C library's `free`, for strings libvirt hands over.
    pub fn free(ptr: *mut c_void);
}

#[cfg(feature = "libvirt")]
#[link(name = "virt-qemu")]
unsafe extern "C" {
    pub fn virDomainQemuMonitorCommandWithFiles(
        domain: *mut VirDomain,
        cmd: *const c_char,
        ninfiles: c_uint,
        infiles: *mut c_int,
        noutfiles: *mut c_uint,
        outfiles: *mut *mut c_int,
        result: *mut *mut c_char,
        flags: c_uint,
    ) -> c_int;
}

/// Without the `libvirt` feature: the same functions, failing as libvirt would when it cannot
/// connect, with a message that says why. `virConnectOpen` fails first, so no other stub is
/// reached.
#[cfg(not(feature = "libvirt"))]
mod absent {
    #![allow(non_snake_case, clippy::missing_safety_doc)]

    use super::{ErrorFunc, VirConnect, VirDomain};
    use std::ffi::{c_char, c_int, c_uint, c_void};

    pub unsafe fn virConnectOpen(_: *const c_char) -> *mut VirConnect {
        std::ptr::null_mut()
    }
    pub unsafe fn virConnectClose(_: *mut VirConnect) -> c_int {
        0
    }
    pub unsafe fn virDomainLookupByName(_: *mut VirConnect, _: *const c_char) -> *mut VirDomain {
        std::ptr::null_mut()
    }
    pub unsafe fn virConnectListAllDomains(
        _: *mut VirConnect,
        _: *mut *mut *mut VirDomain,
        _: c_uint,
    ) -> c_int {
        -1
    }
    pub unsafe fn virDomainGetName(_: *mut VirDomain) -> *const c_char {
        std::ptr::null()
    }
    pub unsafe fn virDomainFree(_: *mut VirDomain) -> c_int {
        0
    }
    pub unsafe fn virDomainGetState(
        _: *mut VirDomain,
        _: *mut c_int,
        _: *mut c_int,
        _: c_uint,
    ) -> c_int {
        -1
    }
    pub unsafe fn virDomainGetXMLDesc(_: *mut VirDomain, _: c_uint) -> *mut c_char {
        std::ptr::null_mut()
    }
    pub unsafe fn virDomainGetID(_: *mut VirDomain) -> c_uint {
        c_uint::MAX
    }
    pub unsafe fn virDomainResume(_: *mut VirDomain) -> c_int {
        -1
    }
    pub unsafe fn virDomainDestroy(_: *mut VirDomain) -> c_int {
        -1
    }
    pub unsafe fn virDomainCreateXML(
        _: *mut VirConnect,
        _: *const c_char,
        _: c_uint,
    ) -> *mut VirDomain {
        std::ptr::null_mut()
    }
    pub unsafe fn virGetLastErrorMessage() -> *const c_char {
        c"this vmattest was built without libvirt support (cargo feature `libvirt`)".as_ptr()
    }
    pub unsafe fn virSetErrorFunc(_: *mut c_void, _: ErrorFunc) {}
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn virDomainQemuMonitorCommandWithFiles(
        _: *mut VirDomain,
        _: *const c_char,
        _: c_uint,
        _: *mut c_int,
        _: *mut c_uint,
        _: *mut *mut c_int,
        _: *mut *mut c_char,
        _: c_uint,
    ) -> c_int {
        -1
    }
}

#[cfg(not(feature = "libvirt"))]
pub use absent::*;
