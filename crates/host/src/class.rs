//! The class of any error a host workflow returns, found by walking its source chain.

use std::error::Error;

use vmattest_core::class::{Classify, ErrorClass};

/// The class of the first error in the chain that knows its class; an OS error that no
/// library classified is the environment's, and anything else is bad input.
pub fn classify(err: &(dyn Error + 'static)) -> ErrorClass {
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
            return crate::files::io_class(io);
        }
        cur = e.source();
    }
    ErrorClass::Input
}

/// The class of `e` itself, when its type is one this workspace defines.
pub fn of(e: &(dyn Error + 'static)) -> Option<ErrorClass> {
    macro_rules! try_types {
        ($($t:ty),* $(,)?) => {
            $(if let Some(x) = e.downcast_ref::<$t>() {
                return Some(x.class());
            })*
        };
    }
    try_types!(
        crate::files::FileError,
        crate::keys::KeyError,
        crate::tpm::TpmError,
        crate::verifier::VerifierError,
        crate::quotefile::QuoteFileError,
        crate::eventlog::EventLogError,
        crate::measurement::MeasurementError,
        crate::policy::PolicyError,
        crate::launch::LaunchError,
        crate::vm::HostVmError,
        crate::chain::ChainError,
        crate::record::RecordFileError,
        crate::verdict::Verdict,
    );
    if let Some(x) = e.downcast_ref::<vmattest_store::StoreError>() {
        return Some(store_class(x));
    }
    if let Some(x) = e.downcast_ref::<vmattest_tpm::TpmError>() {
        return Some(tpm_class(x));
    }
    if let Some(x) = e.downcast_ref::<vmattest_sign::record::RecordSigError>() {
        return Some(record_sig_class(x));
    }
    if let Some(x) = e.downcast_ref::<vmattest_sign::SignError>() {
        return Some(sign_class(x));
    }
    None
}

pub(crate) fn store_class(e: &vmattest_store::StoreError) -> ErrorClass {
    use vmattest_store::StoreError as S;
    if e.is_verification() {
        return ErrorClass::Verification;
    }
    match e {
        S::Io { error, .. } => crate::files::io_class(error),
        S::Locked { .. } => ErrorClass::Environment,
        _ => ErrorClass::Input,
    }
}

pub(crate) fn tpm_class(e: &vmattest_tpm::TpmError) -> ErrorClass {
    use vmattest_tpm::TpmError as T;
    match e {
        T::PcrMismatch { .. } => ErrorClass::Verification,
        T::Input { .. } | T::Blob(_) => ErrorClass::Input,
        _ => ErrorClass::Environment,
    }
}

/// A signature that does not verify under the pinned keys is a failed check wherever it is
/// met, whichever way it fails.
pub(crate) fn record_sig_class(_: &vmattest_sign::record::RecordSigError) -> ErrorClass {
    ErrorClass::Verification
}

pub(crate) fn sign_class(_: &vmattest_sign::SignError) -> ErrorClass {
    ErrorClass::Input
}
