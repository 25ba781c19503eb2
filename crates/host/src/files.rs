//! Reading the files a user names (capped, type-checked, never blocking on a FIFO) and
//! writing results (atomically; secrets mode 0600 from creation).

use std::path::{Path, PathBuf};

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::limit::read_to_cap;
use vmattest_vmconfig::measure::{Accept, open_checked};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot read {what}")]
    Read {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot write {what}")]
    Write {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected a {what} of at most {max} bytes, found more")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        max: u64,
    },
    #[error("{path}: expected a {what} in UTF-8 text")]
    NotUtf8 { path: PathBuf, what: &'static str },
    #[error("{path}: expected a {what} on one line")]
    NotOneLine { path: PathBuf, what: &'static str },
    #[error("{path}: already exists; refusing to overwrite {what}")]
    Exists { path: PathBuf, what: &'static str },
    #[error("{what}")]
    Open {
        what: &'static str,
        #[source]
        source: vmattest_vmconfig::measure::MeasureError,
    },
    #[error("writing {what}")]
    Store {
        what: &'static str,
        #[source]
        source: vmattest_store::StoreError,
    },
}

/// An OS error on a file the user named: a wrong name is their input, anything else is the
/// environment's.
pub(crate) fn io_class(e: &std::io::Error) -> ErrorClass {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound | K::IsADirectory | K::NotADirectory | K::InvalidInput | K::InvalidData => {
            ErrorClass::Input
        }
        _ => ErrorClass::Environment,
    }
}

impl Classify for FileError {
    fn class(&self) -> ErrorClass {
        match self {
            FileError::Read { source, .. } => io_class(source),
            FileError::Write { .. } => ErrorClass::Environment,
            FileError::Store { .. } => ErrorClass::Environment,
            FileError::Open { source, .. } => match source {
                vmattest_vmconfig::measure::MeasureError::Read { source, .. } => io_class(source),
                _ => ErrorClass::Input,
            },
            FileError::TooLarge { .. }
            | FileError::NotUtf8 { .. }
            | FileError::NotOneLine { .. }
            | FileError::Exists { .. } => ErrorClass::Input,
        }
    }
}

/// `-` names standard input.
pub fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Reads at most `max` bytes of a regular file (or standard input for `-`), refusing larger
/// input without reading past the cap, and never blocking on a FIFO or device.
pub fn read_capped(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>, FileError> {
    let read = |source| FileError::Read {
        path: path.to_path_buf(),
        what,
        source,
    };
    let bytes = if is_stdin(path) {
        read_to_cap(std::io::stdin().lock(), max, 0)
    } else {
        let file =
            open_checked(path, Accept::File).map_err(|source| FileError::Open { what, source })?;
        let len = file.metadata().map_err(read)?.len();
        read_to_cap(file, max, len)
    };
    bytes.map_err(read)?.ok_or_else(|| FileError::TooLarge {
        path: path.to_path_buf(),
        what,
        max,
    })
}

/// As [`read_capped`], for UTF-8 text.
pub fn read_text(path: &Path, max: u64, what: &'static str) -> Result<String, FileError> {
    String::from_utf8(read_capped(path, max, what)?).map_err(|_| FileError::NotUtf8 {
        path: path.to_path_buf(),
        what,
    })
}

/// A one-line secret (a token, a webhook key) without its line end.
pub fn read_secret_line(path: &Path, what: &'static str) -> Result<String, FileError> {
    let text = zeroize::Zeroizing::new(read_text(path, 64 * 1024, what)?);
    let line = text.trim();
    if line.is_empty() || line.contains(['\n', '\r']) {
        return Err(FileError::NotOneLine {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(line.to_owned())
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync the directory).
pub fn write_atomic(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), FileError> {
    vmattest_store::write_atomic(path, bytes).map_err(|source| FileError::Store { what, source })
}

/// As [`write_atomic`], mode 0600 from creation: for secrets and guest bytes.
pub fn write_private(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), FileError> {
    vmattest_store::write_atomic_private(path, bytes)
        .map_err(|source| FileError::Store { what, source })
}

/// Refuses to replace an existing file.
pub fn ensure_absent(path: &Path, what: &'static str) -> Result<(), FileError> {
    if path.symlink_metadata().is_ok() {
        return Err(FileError::Exists {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(())
}
