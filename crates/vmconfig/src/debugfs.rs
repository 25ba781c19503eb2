//! The dpkg status file of a raw ext2/3/4 disk image, read with `debugfs` from e2fsprogs
//! (run as a program, read-only, never mounted).
//!
//! debugfs exits 0 even when it fails, and reports on stderr; any stderr line besides its
//! version banner is therefore an error.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vmattest_core::class::{Classify, ErrorClass, io_class};

use crate::measure::{Accept, MeasureError, open_checked};
use crate::packages::MAX_PACKAGE_INPUT_BYTES;

/// Where dpkg keeps its status file in the guest.
pub const DPKG_STATUS_PATH: &str = "/var/lib/dpkg/status";
/// Most of debugfs's error output kept.
const MAX_STDERR: u64 = 64 * 1024;
/// Where e2fsprogs installs debugfs, tried when it is not in `PATH` (`sbin` often is not).
const FALLBACKS: [&str; 2] = ["/usr/sbin/debugfs", "/sbin/debugfs"];

#[derive(Debug, thiserror::Error)]
pub enum DebugfsError {
    #[error("debugfs not found (tried PATH and {FALLBACKS:?}): install e2fsprogs")]
    NotInstalled,
    #[error("disk image {image}")]
    Image {
        image: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {0}")]
    NotAnImage(Box<MeasureError>),
    #[error("running {program}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {image}: {file} not found in its file system")]
    FileAbsent { image: PathBuf, file: String },
    #[error("disk image {image}: {file}: more than {max} bytes")]
    TooLarge {
        image: PathBuf,
        file: String,
        max: usize,
    },
    #[error("disk image {image}: {file}: expected UTF-8 text, found binary data")]
    NotText { image: PathBuf, file: String },
    #[error("disk image {image}: debugfs: {detail}")]
    Failed { image: PathBuf, detail: String },
}

impl Classify for DebugfsError {
    fn class(&self) -> ErrorClass {
        match self {
            DebugfsError::NotInstalled
            | DebugfsError::Spawn { .. }
            | DebugfsError::Failed { .. } => ErrorClass::Environment,
            DebugfsError::Image { source, .. } => io_class(source.kind()),
            DebugfsError::NotAnImage(e) => e.class(),
            DebugfsError::FileAbsent { .. }
            | DebugfsError::TooLarge { .. }
            | DebugfsError::NotText { .. } => ErrorClass::Input,
        }
    }
}

/// Reads [`DPKG_STATUS_PATH`] out of the ext2/3/4 file system in the raw image `image`.
pub fn status_from_image(image: &Path) -> Result<String, DebugfsError> {
    let program = find_debugfs().ok_or(DebugfsError::NotInstalled)?;
    read_file_with(&program, image, DPKG_STATUS_PATH)
}

/// Reads `file` (an absolute path in the guest file system) out of `image` with the debugfs
/// at `program`, capped at the package input limit.
pub fn read_file_with(program: &Path, image: &Path, file: &str) -> Result<String, DebugfsError> {
    // debugfs would take an unreadable image for a failed open, reported as text; a clear
    // error first. Its request language splits on spaces, which a plain path never needs.
    // Checked without blocking: a FIFO named as the image must not hang the command.
    drop(
        open_checked(image, Accept::FileOrBlock).map_err(|e| match e {
            MeasureError::Read { source, .. } => DebugfsError::Image {
                image: image.to_path_buf(),
                source,
            },
            other => DebugfsError::NotAnImage(Box::new(other)),
        })?,
    );
    if !file.starts_with('/') || file.contains(|c: char| c.is_whitespace() || c == '"') {
        return Err(DebugfsError::Failed {
            image: image.to_path_buf(),
            detail: format!("{file:?}: expected an absolute path without spaces or quotes"),
        });
    }
    let mut child = Command::new(program)
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DebugfsError::NotInstalled,
            _ => DebugfsError::Spawn {
                program: program.to_path_buf(),
                source,
            },
        })?;
    // stderr is read on its own thread so neither pipe can fill up and stall debugfs.
    let stderr = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut s).take(MAX_STDERR).read_to_end(&mut buf);
            let _ = std::io::copy(&mut s, &mut std::io::sink());
            buf
        })
    });
    let max = MAX_PACKAGE_INPUT_BYTES;
    let mut out = Vec::new();
    let read = match child.stdout.take() {
        Some(s) => s.take(max as u64 + 1).read_to_end(&mut out).map(|_| ()),
        None => Ok(()),
    };
    let too_large = out.len() > max;
    if too_large {
        // Stop a debugfs that is still writing; it is our child, killed by its handle.
        let _ = child.kill();
    }
    let status = child.wait();
    let err = stderr
        .and_then(|h| h.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let image_buf = || image.to_path_buf();
    if too_large {
        return Err(DebugfsError::TooLarge {
            image: image_buf(),
            file: file.to_string(),
            max,
        });
    }
    read.map_err(|source| DebugfsError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    let status = status.map_err(|source| DebugfsError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    let problems: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_banner(l))
        .collect();
    if problems
        .iter()
        .any(|l| l.contains("File not found by ext2_lookup"))
    {
        return Err(DebugfsError::FileAbsent {
            image: image_buf(),
            file: file.to_string(),
        });
    }
    if !problems.is_empty() || !status.success() {
        let detail = if problems.is_empty() {
            format!("exited with {status}")
        } else {
            problems.join("; ")
        };
        return Err(DebugfsError::Failed {
            image: image_buf(),
            detail,
        });
    }
    String::from_utf8(out).map_err(|_| DebugfsError::NotText {
        image: image_buf(),
        file: file.to_string(),
    })
}

/// `debugfs 1.47.0 (5-Feb-2023)`.
fn is_banner(line: &str) -> bool {
    line.strip_prefix("debugfs ")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()) && rest.ends_with(')'))
}

/// `debugfs` from `PATH`, else from where e2fsprogs installs it.
fn find_debugfs() -> Option<PathBuf> {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("debugfs"))
            .find(|p| p.is_file())
    });
    in_path.or_else(|| FALLBACKS.iter().map(PathBuf::from).find(|p| p.is_file()))
}
