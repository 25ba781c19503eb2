//! File digests and disk roots.
//!
//! A disk's root is the dm-verity format 1 root (SHA-256, no salt, 4096-byte blocks) of the
//! bytes the guest sees, the same tree `vmattest measure --alg sha256` builds, so
//! `veritysetup format --no-superblock --salt - IMAGE HASHDEV` prints the same root for a raw
//! image. A qcow2 image is first converted to raw with `qemu-img convert` into a temporary
//! file, which also follows its backing chain.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest as _, Sha256};
use vmattest_core::alg::HashAlg;
use vmattest_core::class::{Classify, ErrorClass, io_class};
use vmattest_core::tree::{NoProgress, TreeParams};
use vmattest_image::{ImageError, MappedImage};

/// Most of `qemu-img`'s error output kept for a message.
const MAX_TOOL_STDERR: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: expected {expected}, found {found}")]
    NotAFile {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
    #[error("disk image {path}")]
    Image { path: PathBuf, source: ImageError },
    #[error("disk image {path}: format {found:?}: expected raw or qcow2")]
    UnsupportedFormat { path: PathBuf, found: String },
    #[error("disk image {path}: qcow2 to raw conversion: {detail}")]
    Convert { path: PathBuf, detail: String },
}

impl Classify for MeasureError {
    fn class(&self) -> ErrorClass {
        match self {
            MeasureError::Read { source, .. } => io_class(source.kind()),
            MeasureError::NotAFile { .. } | MeasureError::UnsupportedFormat { .. } => {
                ErrorClass::Input
            }
            MeasureError::Image { source, .. } => source.class(),
            // The conversion tool failed or is missing; its output is in `detail`.
            MeasureError::Convert { .. } => ErrorClass::Environment,
        }
    }
}

/// Which kinds of file a measurement accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Kernels, initrds, firmware: regular files only.
    File,
    /// Disk images: a regular file or a block device.
    FileOrBlock,
}

/// Opens `path` for reading and checks what was opened, not what the path named a moment
/// earlier. The open never blocks (a FIFO would otherwise wait forever for a writer), and
/// the type check runs on the open descriptor (`fstat`), so a path swapped for a FIFO, socket,
/// character device or directory in between is still refused. Symlinks are followed: distro
/// kernels and `/dev/disk/by-*` names are symlinks, and what counts is the file reached.
pub fn open_checked(path: &Path, accept: Accept) -> Result<File, MeasureError> {
    use rustix::fs::{Mode, OFlags};
    let read = |source: std::io::Error| MeasureError::Read {
        path: path.to_path_buf(),
        source,
    };
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| read(e.into()))?;
    let file = File::from(fd);
    let kind = file.metadata().map_err(read)?.file_type();
    let expected = match accept {
        Accept::File => "a regular file",
        Accept::FileOrBlock => "a regular file or a block device",
    };
    let found = if kind.is_file() {
        None
    } else if kind.is_block_device() {
        (accept == Accept::File).then_some("a block device")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() {
        Some("a character device")
    } else {
        Some("a special file")
    };
    if let Some(found) = found {
        return Err(MeasureError::NotAFile {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    // Reads of what remains block normally again (no EAGAIN surprises).
    rustix::fs::fcntl_setfl(&file, OFlags::empty()).map_err(|e| read(e.into()))?;
    Ok(file)
}

/// The SHA-256 of a regular file's contents, as lower-case hex (what `sha256sum` prints).
pub fn sha256_file(path: &Path) -> Result<String, MeasureError> {
    let read = |source| MeasureError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = open_checked(path, Accept::File)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The dm-verity (SHA-256, no salt) root of the guest's view of a disk image in `format`
/// (`raw` or `qcow2`), as lower-case hex.
pub fn disk_root(path: &Path, format: &str) -> Result<String, MeasureError> {
    match format {
        "raw" => raw_root(path),
        "qcow2" => {
            // qemu-img would block opening a FIFO anywhere in the chain; it opens the paths
            // itself, so this check cannot pin the files, but it refuses everything but a race.
            check_qcow2_chain(path)?;
            let dir =
                vmattest_qemu::private::tempdir("vmattest-vmconfig-", None).map_err(|source| {
                    MeasureError::Convert {
                        path: path.to_path_buf(),
                        detail: format!("creating a temporary directory: {source}"),
                    }
                })?;
            let raw = dir.path().join("disk.raw");
            qcow2_to_raw(path, &raw)?;
            raw_root(&raw).map_err(|e| match e {
                MeasureError::Image { source, .. } => MeasureError::Image {
                    path: path.to_path_buf(),
                    source,
                },
                other => other,
            })
        }
        other => Err(MeasureError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: other.to_string(),
        }),
    }
}

/// Longest qcow2 backing chain followed.
const MAX_BACKING_DEPTH: usize = 16;
/// Longest backing or data file name a qcow2 header may give (QEMU's limit is 1023).
const MAX_QCOW2_NAME: usize = 4096;

/// Checks that `path` and every file its qcow2 headers name (backing files, external data
/// files) is a regular file or block device, without blocking on any of them.
fn check_qcow2_chain(path: &Path) -> Result<(), MeasureError> {
    let mut next = Some(path.to_path_buf());
    let mut depth = 0;
    while let Some(image) = next.take() {
        let mut file = open_checked(&image, Accept::FileOrBlock)?;
        depth += 1;
        if depth > MAX_BACKING_DEPTH {
            return Err(MeasureError::Convert {
                path: path.to_path_buf(),
                detail: format!("backing chain longer than {MAX_BACKING_DEPTH} images"),
            });
        }
        for (backing, named) in qcow2_named_files(&mut file, &image)? {
            // Protocol names (`nbd://...`, `json:{...}`) are not files.
            let text = named.to_string_lossy();
            if text.contains("://") || text.starts_with("json:") {
                continue;
            }
            // QEMU resolves relative names against the directory of the image naming them.
            let named = image.parent().unwrap_or(Path::new("")).join(named);
            if backing {
                next = Some(named);
            } else {
                drop(open_checked(&named, Accept::FileOrBlock)?);
            }
        }
    }
    Ok(())
}

/// The files a qcow2 header names, as (is the backing file, name): its backing file and its
/// external data file. A file that is not qcow2 names none.
fn qcow2_named_files(file: &mut File, image: &Path) -> Result<Vec<(bool, PathBuf)>, MeasureError> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::ffi::OsStrExt as _;
    let read_err = |source| MeasureError::Read {
        path: image.to_path_buf(),
        source,
    };
    let mut header = [0u8; 104];
    let n = file.read(&mut header).map_err(read_err)?;
    if n < 72 || header[..4] != *b"QFI\xfb" {
        return Ok(Vec::new());
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let be64 = |b: &[u8]| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let mut read_at = |offset: u64, len: usize| -> Result<Vec<u8>, MeasureError> {
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset)).map_err(read_err)?;
        file.read_exact(&mut buf).map_err(read_err)?;
        Ok(buf)
    };
    let name_len = |len: u64| -> Result<usize, MeasureError> {
        usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_QCOW2_NAME)
            .ok_or_else(|| MeasureError::Convert {
                path: image.to_path_buf(),
                detail: format!(
                    "qcow2 header names a file of {len} bytes, expected at most {MAX_QCOW2_NAME}"
                ),
            })
    };
    let mut named = Vec::new();
    let (backing_offset, backing_len) = (be64(&header[8..16]), be32(&header[16..20]));
    if backing_offset != 0 && backing_len != 0 {
        let name = read_at(backing_offset, name_len(backing_len.into())?)?;
        named.push((true, PathBuf::from(std::ffi::OsStr::from_bytes(&name))));
    }
    // Version 3 header extensions: an external data file (type 0x44415441).
    if be32(&header[4..8]) >= 3 && n >= 104 {
        let mut offset = u64::from(be32(&header[100..104]));
        for _ in 0..64 {
            let ext = read_at(offset, 8)?;
            let (kind, len) = (be32(&ext[..4]), be32(&ext[4..8]));
            if kind == 0 {
                break;
            }
            if kind == 0x4441_5441 {
                let name = read_at(offset + 8, name_len(len.into())?)?;
                named.push((false, PathBuf::from(std::ffi::OsStr::from_bytes(&name))));
            }
            offset += 8 + u64::from(len).div_ceil(8) * 8;
        }
    }
    Ok(named)
}

/// Measures a raw image exactly as `vmattest measure --alg sha256` does.
fn raw_root(path: &Path) -> Result<String, MeasureError> {
    let image_err = |source| MeasureError::Image {
        path: path.to_path_buf(),
        source,
    };
    let params = TreeParams::new(HashAlg::Sha256, &[]).map_err(|source| MeasureError::Image {
        path: path.to_path_buf(),
        source: ImageError::Tree {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let file = open_checked(path, Accept::FileOrBlock)?;
    // The map is made through the descriptor just checked, so it is that file's bytes.
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let image = MappedImage::open(&by_fd).map_err(|e| image_err(renamed(e, path)))?;
    drop(file);
    let tree = image.measure(&params, &NoProgress).map_err(image_err)?;
    Ok(tree.root().to_hex())
}

/// `e` with the descriptor path it was opened by replaced by the path the user gave.
fn renamed(e: ImageError, to: &Path) -> ImageError {
    let to = to.to_path_buf();
    match e {
        ImageError::NotFound { .. } => ImageError::NotFound { path: to },
        ImageError::IsDirectory { .. } => ImageError::IsDirectory { path: to },
        ImageError::NotRegular { .. } => ImageError::NotRegular { path: to },
        ImageError::Unreadable { source, .. } => ImageError::Unreadable { path: to, source },
        ImageError::Map { source, .. } => ImageError::Map { path: to, source },
        ImageError::Tree { source, .. } => ImageError::Tree { path: to, source },
    }
}

/// Writes the guest-visible bytes of `qcow2` to `raw`. `-U` reads an image a running QEMU
/// holds locked; the result is only meaningful for a stopped or paused guest.
fn qcow2_to_raw(qcow2: &Path, raw: &Path) -> Result<(), MeasureError> {
    let convert = |detail: String| MeasureError::Convert {
        path: qcow2.to_path_buf(),
        detail,
    };
    let mut child = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(qcow2)
        .arg(raw)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                convert("qemu-img not found: install qemu-utils (or qemu-img)".to_string())
            }
            _ => convert(format!("starting qemu-img: {e}")),
        })?;
    let mut err = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        // Capped; the rest is drained so qemu-img never blocks on a full pipe.
        let mut stderr = stderr;
        let _ = (&mut stderr).take(MAX_TOOL_STDERR).read_to_end(&mut err);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
    }
    let status = child
        .wait()
        .map_err(|e| convert(format!("waiting for qemu-img: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&err);
    let last = text.lines().rev().find(|l| !l.trim().is_empty());
    Err(convert(format!(
        "qemu-img {status}: {}",
        last.unwrap_or("no error message").trim()
    )))
}
