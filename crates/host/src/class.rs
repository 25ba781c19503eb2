//! The class of any error a workflow returns, found by walking its source chain.

use std::error::Error;

use vmattest_core::class::ErrorClass;

/// Finds the class of one error by its type; a crate above this one passes one that knows
/// its own error types too.
pub type ClassOf = dyn Fn(&(dyn Error + 'static)) -> Option<ErrorClass>;

/// The class of the first error in the chain that knows its class ([`of`]); an OS error that
/// no library classified is judged by its kind, and anything else is bad input.
pub fn classify(err: &(dyn Error + 'static)) -> ErrorClass {
    classify_with(err, &of)
}

/// As [`classify`], with `of` telling the class of each error in the chain.
pub fn classify_with(err: &(dyn Error + 'static), of: &ClassOf) -> ErrorClass {
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(class) = of(e) {
            return class;
        }
        cur = e.source();
    }
    let mut cur: Option<&(dyn Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return vmattest_core::class::io_class(io.kind());
        }
        cur = e.source();
    }
    ErrorClass::Input
}

/// Returns `Some(class)` from the enclosing function when `$e` (a `&dyn Error`) is one of the
/// listed error types; every crate that adds error types lists them with it.
#[macro_export]
macro_rules! return_class_of {
    ($e:expr; $($t:ty),* $(,)?) => {
        $(if let Some(x) = $e.downcast_ref::<$t>() {
            return Some(::vmattest_core::class::Classify::class(x));
        })*
    };
}

/// The class of `e` itself, when its type is one of this workspace's classified errors.
pub fn of(e: &(dyn Error + 'static)) -> Option<ErrorClass> {
    return_class_of!(e;
        // This crate.
        crate::chain::ChainError,
        crate::domain::HostDomainError,
        crate::eventlog::EventLogError,
        crate::files::FileError,
        crate::keys::KeyError,
        crate::launch::LaunchError,
        crate::measurement::MeasurementError,
        crate::policy::PolicyError,
        crate::quotefile::QuoteFileError,
        crate::record::RecordFileError,
        crate::release::ReleaseError,
        crate::revoke::RevokeError,
        crate::tpm::TpmError,
        crate::verdict::Verdict,
        crate::verifier::VerifierError,
        crate::vm::HostVmError,
        // The libraries below it.
        vmattest_client::ClientError,
        vmattest_client::ConnectError,
        vmattest_core::attest::AttestError,
        vmattest_core::config::ConfigError,
        vmattest_core::config::reference::ReferenceError,
        vmattest_core::record::RecordError,
        vmattest_core::time::TimeError,
        vmattest_core::tree::ProofError,
        vmattest_core::tree::TreeError,
        vmattest_core::wire::WireError,
        vmattest_image::ImageError,
        vmattest_libvirt::DomainError,
        vmattest_libvirt::LibvirtError,
        vmattest_qemu::capture::CaptureError,
        vmattest_qemu::guard::GuardError,
        vmattest_qemu::QmpError,
        vmattest_qemu::SpecError,
        vmattest_qemu::VmError,
        vmattest_quote::CredentialError,
        vmattest_quote::KeyCertError,
        vmattest_quote::ParseError,
        vmattest_quote::QuoteError,
        vmattest_sign::SignError,
        vmattest_sign::record::RecordSigError,
        vmattest_sign::signing::SigningError,
        vmattest_store::StoreError,
        vmattest_tpm::TpmError,
        vmattest_tpm::BlobError,
        vmattest_vmconfig::DebugfsError,
        vmattest_vmconfig::MeasureError,
        vmattest_vmconfig::PackageError,
        vmattest_vmconfig::ParamError,
        vmattest_vmconfig::SpecParamError,
        vmattest_vmconfig::XmlError,
    );
    None
}
