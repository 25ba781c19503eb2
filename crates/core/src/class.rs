//! Error classes: what kind of failure an error is, independent of the command that met it.
//!
//! Every library error maps each of its variants to one class; front ends derive exit codes
//! and machine-readable codes from the class alone, so the same failure is reported the same
//! way everywhere (docs/ERRORS.md).

use std::fmt;
use std::io;

/// The kind of a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A check ran and the data does not match its signed commitments, its pinned keys or its
    /// reference: a signature by an unpinned key, a tampered store, a changed page.
    Verification,
    /// The input or the invocation is wrong: a malformed or oversize file, a missing argument,
    /// a name that does not exist.
    Input,
    /// The environment failed: no TPM, QEMU or server reachable, a locked store, an I/O error.
    Environment,
    /// A server refused the caller: authentication or permission.
    Denied,
}

impl ErrorClass {
    /// Every class, in exit-code order.
    pub const ALL: [ErrorClass; 4] = [
        ErrorClass::Verification,
        ErrorClass::Input,
        ErrorClass::Environment,
        ErrorClass::Denied,
    ];

    /// The process exit code of a command that failed with this class.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::Verification => 1,
            ErrorClass::Input => 2,
            ErrorClass::Environment => 3,
            ErrorClass::Denied => 4,
        }
    }

    /// The `code` of a `--json` error object.
    pub fn code(self) -> &'static str {
        match self {
            ErrorClass::Verification => "verification_failed",
            ErrorClass::Input => "bad_input",
            ErrorClass::Environment => "environment",
            ErrorClass::Denied => "denied",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An error that knows its class.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

impl<T: Classify + ?Sized> Classify for Box<T> {
    fn class(&self) -> ErrorClass {
        (**self).class()
    }
}

/// The class of an OS error met while reading or writing a file the caller named: a path that
/// does not exist or is not what was asked for is the caller's input; anything else (permissions,
/// a full disk, a failing device) is the environment.
pub fn io_class(kind: io::ErrorKind) -> ErrorClass {
    match kind {
        io::ErrorKind::NotFound
        | io::ErrorKind::AlreadyExists
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::InvalidData
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::InvalidFilename => ErrorClass::Input,
        _ => ErrorClass::Environment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_codes_are_distinct() {
        let mut exits: Vec<u8> = ErrorClass::ALL.iter().map(|c| c.exit_code()).collect();
        let mut codes: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.code()).collect();
        exits.dedup();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(exits.len(), 4);
        assert_eq!(codes.len(), 4);
        assert!(!exits.contains(&0));
    }

    #[test]
    fn a_missing_file_is_input_and_a_refused_one_is_environment() {
        assert_eq!(io_class(io::ErrorKind::NotFound), ErrorClass::Input);
        assert_eq!(io_class(io::ErrorKind::UnexpectedEof), ErrorClass::Input);
        assert_eq!(
            io_class(io::ErrorKind::PermissionDenied),
            ErrorClass::Environment
        );
        assert_eq!(
            io_class(io::ErrorKind::StorageFull),
            ErrorClass::Environment
        );
    }
}
