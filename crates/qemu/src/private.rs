//! Files that hold guest bytes (RAM, disks, device state, console output) are the owner's
//! alone: 0600 inside 0700 directories, whatever the umask.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Creates `path` (and missing parents) and makes it 0700, tightening one that exists.
pub(crate) fn dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(0o700))
}

/// Makes the existing file `path` 0600.
pub(crate) fn file(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(0o600))
}

/// Opens `path` for writing, created 0600 (an existing file is made 0600 too); `truncate`
/// empties it.
pub(crate) fn create(path: &Path, truncate: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(0o600))?;
    Ok(f)
}
