//! File-backed images: opened read-only and memory-mapped, never copied, then measured by
//! the core. [`MappedImage`] lends its bytes as a slice and is for files that nobody writes
//! while they are mapped; [`LiveImage`] is for files that others write (a running guest's RAM)
//! and only copies bytes out.

mod live;

pub use live::LiveImage;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::tree::{ImageTree, Progress, TreeError, TreeParams};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: no such file")]
    NotFound { path: PathBuf },
    #[error("{path}: is a directory, expected an image file")]
    IsDirectory { path: PathBuf },
    #[error("{path}: not a regular file or block device")]
    NotRegular { path: PathBuf },
    #[error("{path}: cannot read")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("{path}: cannot map into memory")]
    Map { path: PathBuf, source: io::Error },
    #[error("{path}")]
    Tree { path: PathBuf, source: TreeError },
}

impl Classify for ImageError {
    fn class(&self) -> ErrorClass {
        match self {
            ImageError::NotFound { .. }
            | ImageError::IsDirectory { .. }
            | ImageError::NotRegular { .. }
            | ImageError::Tree { .. } => ErrorClass::Input,
            ImageError::Unreadable { .. } | ImageError::Map { .. } => ErrorClass::Environment,
        }
    }
}

/// A read-only view of an image file.
#[derive(Debug)]
pub struct MappedImage {
    path: PathBuf,
    map: Option<Mmap>,
    file: Option<File>,
}

impl MappedImage {
    pub fn open(path: &Path) -> Result<MappedImage, ImageError> {
        MappedImage::from_file(open_image_file(path)?, path)
    }

    /// Maps a file the caller opened (for example without following symlinks, or an
    /// anonymous memory file); `path` names it in messages.
    pub fn from_file(file: File, path: &Path) -> Result<MappedImage, ImageError> {
        let len = checked_len(&file, path)?;
        if len == 0 {
            return Ok(MappedImage {
                path: path.to_path_buf(),
                map: None,
                file: None,
            });
        }
        // SAFETY: `Mmap::map` maps the file read-only and SHARED: writes that anyone makes to
        // the file show through the map, and the slice that `bytes` lends would then change
        // under the compiler's assumptions. The invariant is therefore that nobody writes the
        // file while it is mapped: vmattest maps the images of stopped or paused VMs, files it
        // wrote itself (restores, the head cache under the writer lock, memory files), and the
        // images a user names, which the user must leave alone meanwhile. A running guest's
        // RAM goes through `LiveImage` instead. Truncating a mapped file raises SIGBUS.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ImageError::Map {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(MappedImage {
            path: path.to_path_buf(),
            map: Some(map),
            file: Some(file),
        })
    }

    /// Page ranges `[first, end)` that lie wholly in holes of a sparse file: they read as zeros
    /// and need not be touched (a guest's untouched RAM, a disk's unwritten blocks). Empty when
    /// the file system cannot tell.
    pub fn holes(&self) -> Vec<PageRange> {
        use rustix::fs::{SeekFrom, seek};
        let (Some(file), len) = (&self.file, self.bytes().len() as u64) else {
            return Vec::new();
        };
        let page = vmattest_core::alg::PAGE_SIZE as u64;
        let mut out = Vec::new();
        let mut at = 0u64;
        while at < len {
            let Ok(hole) = seek(file, SeekFrom::Hole(at)) else {
                break;
            };
            if hole >= len {
                break;
            }
            // No data after the hole: it runs to the end of the file.
            let data = seek(file, SeekFrom::Data(hole)).unwrap_or(len).min(len);
            let (first, end) = (hole.div_ceil(page), data / page);
            let end = if data == len { len.div_ceil(page) } else { end };
            if end > first {
                out.push(PageRange { first, end });
            }
            at = data.max(hole + 1);
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Builds the image tree over the mapped bytes.
    pub fn measure(
        &self,
        params: &TreeParams,
        progress: &dyn Progress,
    ) -> Result<ImageTree, ImageError> {
        ImageTree::build(params, self.bytes(), progress).map_err(|source| ImageError::Tree {
            path: self.path.clone(),
            source,
        })
    }
}

/// An image is a regular file or a block device; anything else is refused, naming the path.
fn check_type(meta: &std::fs::Metadata, path: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::FileTypeExt as _;
    if meta.is_dir() {
        return Err(ImageError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(ImageError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Opens an image file read-only, refusing what is not a regular file or block device (a FIFO
/// or character device would block the open or yield a stream, not an image).
pub(crate) fn open_image_file(path: &Path) -> Result<File, ImageError> {
    let owned = || path.to_path_buf();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ImageError::NotFound { path: owned() },
        _ => ImageError::Unreadable {
            path: owned(),
            source: e,
        },
    })?;
    check_type(&meta, path)?;
    use std::os::unix::fs::OpenOptionsExt as _;
    File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| ImageError::Unreadable {
            path: owned(),
            source: e,
        })
}

/// The length of an open image, which must be a regular file or block device.
pub(crate) fn checked_len(file: &File, path: &Path) -> Result<u64, ImageError> {
    let owned = || path.to_path_buf();
    let meta = file.metadata().map_err(|e| ImageError::Unreadable {
        path: owned(),
        source: e,
    })?;
    check_type(&meta, path)?;
    file_len(file).map_err(|e| ImageError::Unreadable {
        path: owned(),
        source: e,
    })
}

/// Pages `[first, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub first: u64,
    pub end: u64,
}

/// Length of a regular file or block device.
fn file_len(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmattest_core::alg::HashAlg;
    use vmattest_core::tree::NoProgress;

    #[test]
    fn open_errors_are_distinct() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            MappedImage::open(dir.path()),
            Err(ImageError::IsDirectory { .. })
        ));
        let missing = dir.path().join("nope");
        assert!(matches!(
            MappedImage::open(&missing),
            Err(ImageError::NotFound { .. })
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let img = MappedImage::open(&empty).unwrap();
        assert!(img.bytes().is_empty());
        let params = TreeParams::new(HashAlg::Sha256, &[]).unwrap();
        assert!(matches!(
            img.measure(&params, &NoProgress),
            Err(ImageError::Tree { .. })
        ));
    }

    #[test]
    fn missing_and_wrong_files_are_input_and_os_refusals_are_environment() {
        use std::io::ErrorKind;
        let dir = tempfile::tempdir().unwrap();
        let class = |r: Result<MappedImage, ImageError>| r.map(drop).unwrap_err().class();
        assert_eq!(class(MappedImage::open(dir.path())), ErrorClass::Input);
        assert_eq!(
            class(MappedImage::open(&dir.path().join("nope"))),
            ErrorClass::Input
        );
        let refused = ImageError::Unreadable {
            path: "ram".into(),
            source: io::Error::from(ErrorKind::PermissionDenied),
        };
        assert_eq!(refused.class(), ErrorClass::Environment);
        let empty = ImageError::Tree {
            path: "ram".into(),
            source: TreeError::EmptyImage {
                alg: HashAlg::Sha256,
            },
        };
        assert_eq!(empty.class(), ErrorClass::Input);
    }

    #[test]
    #[allow(clippy::cast_possible_truncation)]
    fn holes_are_whole_zero_pages_of_sparse_files() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = File::create(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(b"data", 1 << 20).unwrap();
        f.sync_all().unwrap();
        let img = MappedImage::open(&path).unwrap();
        let holes = img.holes();
        let pages = 1024u64;
        // Every hole page reads as zeros, and the written page is in no hole.
        for r in &holes {
            assert!(r.first < r.end && r.end <= pages, "{r:?}");
            let bytes = &img.bytes()[r.first as usize * 4096..(r.end as usize * 4096).min(4 << 20)];
            assert!(bytes.iter().all(|&b| b == 0));
            assert!(!(r.first..r.end).contains(&256), "{r:?}");
        }
        assert!(holes.iter().map(|r| r.end - r.first).sum::<u64>() >= pages - 16);
    }
}
