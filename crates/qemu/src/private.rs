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

/// File in an owned scratch directory naming the process that made it.
const OWNER: &str = "owner";

/// [`tempdir`] for work a SIGKILL may interrupt: the directory names its process, and
/// directories with `prefix` beside it whose process is gone are removed first. One that
/// still holds a pause marker is left to the guardian that resumes its guest.
pub fn owned_tempdir(prefix: &str, parent: Option<&Path>) -> io::Result<tempfile::TempDir> {
    let dir = tempdir(prefix, parent)?;
    crate::guard::write_owner(&dir.path().join(OWNER))?;
    sweep(prefix, dir.path());
    Ok(dir)
}

fn sweep(prefix: &str, own: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let (Some(parent), Ok(me)) = (own.parent(), std::fs::symlink_metadata(own)) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let ours = e.file_name().to_string_lossy().starts_with(prefix)
            && path != own
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me.uid());
        if ours
            && crate::guard::owner_gone(&path.join(OWNER))
            && !path.join(crate::guard::MARKER).exists()
        {
            let _ = std::fs::remove_dir_all(&path);
        }
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

    /// hostd killed mid-capture, outside the pause its guardian covers, left the capture's
    /// scratch (guest RAM and disks) in the temporary directory for good.
    #[test]
    fn regression_a_killed_capture_leaves_no_scratch_behind() {
        let parent = tempfile::tempdir().unwrap();
        let made = |name: &str, owner: Option<&str>, paused: bool| {
            let d = parent.path().join(name);
            dir(&d).unwrap();
            std::fs::write(d.join("ram"), b"guest bytes").unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER), o).unwrap();
            }
            if paused {
                std::fs::write(d.join(crate::guard::MARKER), "").unwrap();
            }
            d
        };
        let gone = "vmattest capture pause v1\npid 0\nstart 0\n";
        let dead = made("cap-dead", Some(gone), false);
        let paused = made("cap-paused", Some(gone), true);
        let unnamed = made("cap-unnamed", None, false);
        let other = made("other-dead", Some(gone), false);
        let live = owned_tempdir("cap-", Some(parent.path())).unwrap();
        // A live owner's directory is kept by the next sweep too.
        let next = owned_tempdir("cap-", Some(parent.path())).unwrap();
        assert!(!dead.exists());
        for kept in [&paused, &unnamed, &other, &live.path().to_path_buf()] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(next.path().join(OWNER).exists());
    }
}
