//! File digests and disk roots.
//!
//! A disk's root is the dm-verity format 1 root (SHA-256, no salt, 4096-byte blocks) of the
//! bytes the guest sees, the same tree `vmattest measure --alg sha256` builds, so
//! `veritysetup format --no-superblock --salt - IMAGE HASHDEV` prints the same root for a raw
//! image. A qcow2 image is first converted to raw with `qemu-img convert` into a temporary
//! file, which also follows its backing chain.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest as _, Sha256};
use vmattest_core::alg::HashAlg;
use vmattest_core::tree::{NoProgress, TreeParams};
use vmattest_image::{ImageError, MappedImage};

/// Most of `qemu-img`'s error output kept for a message.
const MAX_TOOL_STDERR: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: expected a regular file, found {found}")]
    NotAFile { path: PathBuf, found: &'static str },
    #[error("disk image {path}: {source}")]
    Image { path: PathBuf, source: ImageError },
    #[error("disk image {path}: format {found:?}: expected raw or qcow2")]
    UnsupportedFormat { path: PathBuf, found: String },
    #[error("disk image {path}: qcow2 to raw conversion: {detail}")]
    Convert { path: PathBuf, detail: String },
}

/// The SHA-256 of a file's contents, as lower-case hex (what `sha256sum` prints).
pub fn sha256_file(path: &Path) -> Result<String, MeasureError> {
    let read = |source| MeasureError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        let found = if meta.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(MeasureError::NotAFile {
            path: path.to_path_buf(),
            found,
        });
    }
    let mut file = File::open(path).map_err(read)?;
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
            let dir = tempfile::Builder::new()
                .prefix("vmattest-vmconfig-")
                .tempdir()
                .map_err(|source| MeasureError::Convert {
                    path: path.to_path_buf(),
                    detail: format!("creating a temporary directory: {source}"),
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
    let image = MappedImage::open(path).map_err(image_err)?;
    let tree = image.measure(&params, &NoProgress).map_err(image_err)?;
    Ok(tree.root().to_hex())
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
