//! Store file access that never follows a symlink and never blocks on a special file.
//!
//! Whoever can write into a store directory can plant a symlink, a FIFO or a device where the
//! store expects a file or directory. Every access below a store's root therefore walks the
//! relative path one component at a time from an open directory (`openat` with `O_NOFOLLOW`),
//! opens files with `O_NONBLOCK` (a FIFO or device never hangs the open) and checks the type of
//! what it opened with `fstat`, so a swap between check and use changes nothing. Directories
//! are created 0700 and files 0600: a store holds guest bytes.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use vmattest_core::limit::read_to_cap;

use crate::StoreError;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// An open directory and the path it was opened at (for messages only).
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// How [`Dir::open_file`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    /// Read and write an existing file.
    Write,
    /// Create a file that must not exist yet (0600).
    CreateNew,
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

fn wrong_type(path: PathBuf, expected: FileType, found: FileType) -> StoreError {
    StoreError::FileType {
        path,
        expected: type_name(expected),
        found: type_name(found),
    }
}

fn io_err(path: PathBuf, e: Errno) -> StoreError {
    StoreError::Io {
        path,
        error: e.into(),
    }
}

/// The single normal components of `rel`; anything else (`..`, `/`, `.`) is a programming
/// error that must not reach the file system.
fn components(rel: &Path) -> Result<Vec<&std::ffi::OsStr>, StoreError> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(StoreError::Input(format!(
                "{}: expected a path inside the store",
                rel.display()
            ))),
        })
        .collect()
}

impl Dir {
    /// Opens the directory a user named (following the path given, as any tool would), and
    /// refuses anything that is not a directory.
    pub fn open_root(path: &Path) -> Result<Dir, StoreError> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(path.to_path_buf(), e))?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// What is at `name` in this directory, without following a symlink.
    fn kind_here(&self, name: &std::ffi::OsStr) -> Result<Option<FileType>, Errno> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the subdirectory `name` of this directory, refusing anything but a directory.
    fn child_dir(&self, name: &std::ffi::OsStr) -> Result<Dir, StoreError> {
        let path = self.path.join(name);
        match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Dir { fd, path }),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => match self.kind_here(name) {
                Ok(Some(t)) if t != FileType::Directory => {
                    Err(wrong_type(path, FileType::Directory, t))
                }
                _ => Err(io_err(path, e)),
            },
            Err(e) => Err(io_err(path, e)),
        }
    }

    /// Opens the directory at `rel` below this one.
    pub fn open_dir(&self, rel: &Path) -> Result<Dir, StoreError> {
        let mut dir = self.child_dir(".".as_ref())?;
        dir.path = self.path.clone();
        for c in components(rel)? {
            dir = dir.child_dir(c)?;
        }
        Ok(dir)
    }

    /// Opens `rel`'s directory and returns it with the final component.
    fn parent_of<'p>(&self, rel: &'p Path) -> Result<(Dir, &'p std::ffi::OsStr), StoreError> {
        let parts = components(rel)?;
        let Some((last, dirs)) = parts.split_last() else {
            return Err(StoreError::Input("expected a file name".into()));
        };
        let mut dir = self.open_dir(Path::new(""))?;
        for c in dirs {
            dir = dir.child_dir(c)?;
        }
        Ok((dir, last))
    }

    /// Creates every missing directory of `rel` (0700) and opens the last.
    pub fn create_dir_all(&self, rel: &Path) -> Result<Dir, StoreError> {
        let mut dir = self.open_dir(Path::new(""))?;
        for c in components(rel)? {
            match rustix::fs::mkdirat(&dir.fd, c, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err(dir.path.join(c), e)),
            }
            dir = dir.child_dir(c)?;
        }
        Ok(dir)
    }

    /// The type of what is at `rel` (not following a final symlink), or `None`.
    pub fn kind(&self, rel: &Path) -> Result<Option<FileType>, StoreError> {
        let (dir, name) = match self.parent_of(rel) {
            Ok(p) => p,
            Err(StoreError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        dir.kind_here(name)
            .map_err(|e| io_err(self.display(rel), e))
    }

    /// Whether a regular file is at `rel`; any other type there is an error.
    pub fn file_exists(&self, rel: &Path) -> Result<bool, StoreError> {
        match self.kind(rel)? {
            None => Ok(false),
            Some(FileType::RegularFile) => Ok(true),
            Some(t) => Err(wrong_type(self.display(rel), FileType::RegularFile, t)),
        }
    }

    /// Opens the regular file at `rel`.
    pub fn open_file(&self, rel: &Path, access: Access) -> Result<File, StoreError> {
        let (dir, name) = self.parent_of(rel)?;
        dir.open_here(name, access)
    }

    fn open_here(&self, name: &std::ffi::OsStr, access: Access) -> Result<File, StoreError> {
        let path = self.path.join(name);
        let base = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let flags = match access {
            Access::Read => base | OFlags::RDONLY,
            Access::Write => base | OFlags::RDWR,
            Access::CreateNew => base | OFlags::RDWR | OFlags::CREATE | OFlags::EXCL,
        };
        // Refuse a special file before opening it: opening some devices has side effects.
        if access != Access::CreateNew {
            match self.kind_here(name) {
                Ok(Some(FileType::RegularFile)) | Ok(None) => {}
                Ok(Some(t)) => return Err(wrong_type(path, FileType::RegularFile, t)),
                Err(e) => return Err(io_err(path, e)),
            }
        }
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(FILE_MODE)) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                return Err(wrong_type(path, FileType::RegularFile, FileType::Symlink));
            }
            Err(e) => return Err(io_err(path, e)),
        };
        // The type checked above may have been swapped before the open: check what we hold.
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(path.clone(), e))?;
        let t = FileType::from_raw_mode(st.st_mode);
        if t != FileType::RegularFile {
            return Err(wrong_type(path, FileType::RegularFile, t));
        }
        // O_NONBLOCK has no effect on regular files; clear it anyway so nothing depends on it.
        let fl = rustix::fs::fcntl_getfl(&fd).map_err(|e| io_err(path.clone(), e))?;
        rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK).map_err(|e| io_err(path, e))?;
        Ok(File::from(fd))
    }

    /// Reads the regular file at `rel`, refusing it above `max` bytes before reading.
    pub fn read_capped(&self, rel: &Path, max: usize) -> Result<Vec<u8>, StoreError> {
        let path = self.display(rel);
        let f = self.open_file(rel, Access::Read)?;
        read_file_capped(f, &path, max)
    }

    /// Writes `bytes` to a new 0600 temp file beside `rel`, fsyncs it and renames it over
    /// `rel` (a rename replaces a planted symlink instead of following it). The directory is
    /// fsynced when `sync_dir` is set; batching writers fsync it once themselves.
    pub fn write_file(&self, rel: &Path, bytes: &[u8], sync_dir: bool) -> Result<(), StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        // Unique per call: parallel writers may produce the same object at the same moment.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let (dir, name) = self.parent_of(rel)?;
        let tmp = format!(
            ".{}.{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.display(rel);
        let result = (|| {
            let mut f = dir.open_here(tmp.as_ref(), Access::CreateNew)?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| StoreError::Io {
                    path: path.clone(),
                    error: e,
                })?;
            rustix::fs::renameat(&dir.fd, tmp.as_str(), &dir.fd, name)
                .map_err(|e| io_err(path.clone(), e))
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir.fd, tmp.as_str(), AtFlags::empty());
        }
        result?;
        if sync_dir { dir.sync() } else { Ok(()) }
    }

    /// Renames `from` to `to`, both below this directory.
    pub fn rename(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        let (fd, fname) = self.parent_of(from)?;
        let (td, tname) = self.parent_of(to)?;
        rustix::fs::renameat(&fd.fd, fname, &td.fd, tname).map_err(|e| io_err(self.display(to), e))
    }

    /// Removes the file (or symlink, or special file) at `rel` if there is one; never a
    /// directory.
    pub fn remove_file(&self, rel: &Path) -> Result<(), StoreError> {
        let (dir, name) = self.parent_of(rel)?;
        match rustix::fs::unlinkat(&dir.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(self.display(rel), e)),
        }
    }

    /// Removes whatever is at `rel`: a directory with everything below it, never following a
    /// symlink (a planted link is removed itself, its target is left alone).
    pub fn remove_tree(&self, rel: &Path) -> Result<(), StoreError> {
        let (dir, name) = self.parent_of(rel)?;
        dir.remove_here(name)
    }

    fn remove_here(&self, name: &std::ffi::OsStr) -> Result<(), StoreError> {
        let path = self.path.join(name);
        match self.kind_here(name).map_err(|e| io_err(path.clone(), e))? {
            None => Ok(()),
            Some(FileType::Directory) => {
                let sub = self.child_dir(name)?;
                for (entry, _) in sub.entries()? {
                    sub.remove_here(entry.as_ref())?;
                }
                match rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(io_err(path, e)),
                }
            }
            Some(_) => match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(io_err(path, e)),
            },
        }
    }

    /// The entries of this directory (without `.` and `..`) with their types, not followed.
    pub fn entries(&self) -> Result<Vec<(String, FileType)>, StoreError> {
        let it = rustix::fs::Dir::read_from(&self.fd).map_err(|e| io_err(self.path.clone(), e))?;
        let mut out = Vec::new();
        for e in it {
            let e = e.map_err(|e| io_err(self.path.clone(), e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let t = match e.file_type() {
                FileType::Unknown => self
                    .kind_here(name.as_ref())
                    .map_err(|err| io_err(self.path.join(&name), err))?
                    .unwrap_or(FileType::Unknown),
                t => t,
            };
            out.push((name, t));
        }
        Ok(out)
    }

    /// Creates a 0600 file `name` here that must not exist yet.
    pub fn create_new(&self, name: &str) -> Result<File, StoreError> {
        self.open_here(name.as_ref(), Access::CreateNew)
    }

    pub fn sync(&self) -> Result<(), StoreError> {
        rustix::fs::fsync(&self.fd).map_err(|e| io_err(self.path.clone(), e))
    }

    /// Sets this directory's mode to 0700 (a store made by an older version, or by hand).
    pub fn make_private(&self) -> Result<(), StoreError> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(DIR_MODE))
            .map_err(|e| io_err(self.path.clone(), e))
    }
}

/// Reads an open file, refusing it above `max` bytes before reading.
pub(crate) fn read_file_capped(f: File, path: &Path, max: usize) -> Result<Vec<u8>, StoreError> {
    let io = |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    };
    let len = f.metadata().map_err(io)?.len();
    if len > max as u64 {
        return Err(StoreError::TooLarge {
            path: path.to_path_buf(),
            max: max as u64,
            found: len,
        });
    }
    // A file that grew since its length was read is refused, not cut.
    read_to_cap(f, max as u64, len)
        .map_err(io)?
        .ok_or_else(|| StoreError::TooLarge {
            path: path.to_path_buf(),
            max: max as u64,
            found: len.max(max as u64 + 1),
        })
}

/// A fresh, private scratch directory (random name, 0700) removed with its contents on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    parent: Dir,
    name: String,
    dir: Dir,
}

impl TempDir {
    /// Creates `label-PID-RANDOM` in `parent`.
    pub fn new_in(parent: Dir, label: &str) -> Result<TempDir, StoreError> {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| StoreError::Input(format!("OS randomness: {e}")))?;
        let name = format!("{label}-{}-{}", std::process::id(), hex::encode(rnd));
        rustix::fs::mkdirat(&parent.fd, name.as_str(), Mode::from_raw_mode(DIR_MODE))
            .map_err(|e| io_err(parent.path.join(&name), e))?;
        let dir = parent.child_dir(name.as_ref())?;
        Ok(TempDir { parent, name, dir })
    }

    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the directory to `name` in its parent and keeps it.
    pub fn persist(mut self, name: &std::ffi::OsStr) -> Result<(), StoreError> {
        let to = self.parent.path.join(name);
        rustix::fs::renameat(&self.parent.fd, self.name.as_str(), &self.parent.fd, name)
            .map_err(|e| io_err(to, e))?;
        // Renamed away: nothing is left to remove.
        self.name.clear();
        self.parent.sync()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = self.parent.remove_here(self.name.as_ref());
        }
    }
}

/// An anonymous in-memory file: scratch images of an encrypted store never touch a disk.
pub(crate) fn memory_file(label: &str) -> Result<File, StoreError> {
    rustix::fs::memfd_create(label, rustix::fs::MemfdFlags::CLOEXEC)
        .map(File::from)
        .map_err(|e| io_err(PathBuf::from(format!("memfd:{label}")), e))
}
