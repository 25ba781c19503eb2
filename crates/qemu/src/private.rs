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

/// A new scratch directory, mode 0700 from its creation whatever the umask (tempfile alone
/// would make it 0777 less the umask), removed when dropped; in `parent`, else the temporary
/// directory.
pub fn tempdir(prefix: &str, parent: Option<&Path>) -> io::Result<tempfile::TempDir> {
    let mode = Permissions::from_mode(0o700);
    let mut b = tempfile::Builder::new();
    b.prefix(prefix).permissions(mode);
    match parent {
        Some(p) => b.tempdir_in(p),
        None => b.tempdir(),
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Scratch directories hold guest RAM, disks and device state. tempfile alone made them
    /// 0777 less the umask (0755 under the usual 022), readable by every local user.
    #[test]
    fn regression_scratch_directories_are_0700_whatever_the_umask() {
        let parent = tempfile::tempdir().unwrap();
        for p in [None, Some(parent.path())] {
            let d = tempdir("scratch-", p).unwrap();
            let mode = std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.path().display());
        }
    }
}
