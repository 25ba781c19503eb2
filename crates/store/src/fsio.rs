//! Crash-safe file writes and capped reads.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use crate::StoreError;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + use<> {
    let path = path.to_path_buf();
    move |error| StoreError::Io { path, error }
}

/// Temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    // A new temp file, never one planted under the predictable name.
    write_durable_with(path, bytes, |tmp| {
        let _ = std::fs::remove_file(tmp);
        File::options().write(true).create_new(true).open(tmp)
    })?;
    sync_dir(parent_dir(path))
}

/// As [`write_atomic`], for secrets: the file is mode 0600 from its creation, so its bytes are
/// never readable by others, not even in the temp file.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    write_durable_with(path, bytes, |tmp| {
        // A leftover of a crashed writer must not lend the file its mode.
        let _ = std::fs::remove_file(tmp);
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
    })?;
    sync_dir(parent_dir(path))
}

/// The directory holding `path`; "." for a bare file name.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to a temp file beside `path` opened by `open`, fsyncs it and renames it.
fn write_durable_with(
    path: &Path,
    bytes: &[u8],
    open: impl FnOnce(&Path) -> std::io::Result<File>,
) -> Result<(), StoreError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique per call: parallel writers may produce the same object at the same moment.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::Io {
            path: path.to_path_buf(),
            error: e,
        }
    })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Opens a regular file named by a user for reading; a FIFO or device is refused without
/// blocking.
pub(crate) fn open_regular(path: &Path) -> Result<File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io(path))?;
    if !f.metadata().map_err(io(path))?.is_file() {
        return Err(StoreError::FileType {
            path: path.to_path_buf(),
            expected: "a regular file",
            found: "another type of file",
        });
    }
    Ok(f)
}

/// Reads a whole regular file named by a user, refusing it above `max` bytes before reading;
/// a FIFO or device is refused without blocking.
pub(crate) fn read_capped(path: &Path, max: usize) -> Result<Vec<u8>, StoreError> {
    crate::dir::read_file_capped(open_regular(path)?, path, max)
}
