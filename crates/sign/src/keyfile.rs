//! Key files: the only module of this crate that does I/O.
//!
//! Writes never overwrite: the key goes to a temporary file in the target directory (created
//! with its final mode from the start), is fsynced, and is renamed into place only if nothing
//! exists there; then the directory is fsynced. Secret key files are created 0600 and refused
//! on reading if group or others have any access.

use std::fs::{self, File, Permissions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

use zeroize::Zeroizing;

use crate::{PublicKey, SecretKey, SignError};

/// Key files larger than this are refused unread.
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

const SECRET_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;

/// Writes `key` as PKCS#8 PEM to a new file of mode 0600; refuses to replace anything.
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), SignError> {
    let pem = key.to_pem();
    write_new(path, pem.as_bytes(), SECRET_MODE)
}

/// Reads a secret key file, refusing one whose mode gives group or others any access.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, SignError> {
    let (text, mode) = read_limited(path)?;
    let key = SecretKey::from_pem_at(&text, &origin(path));
    if mode & 0o077 != 0 {
        // A public key handed over by mistake is named as such, not blamed on its usual mode.
        return match key {
            Err(e @ SignError::WrongKeyType { .. }) => Err(e),
            _ => Err(SignError::InsecureMode {
                path: path.to_path_buf(),
                mode,
            }),
        };
    }
    key
}

/// Writes `key` as SPKI PEM to a new file of mode 0644 (less the umask); refuses to replace
/// anything.
pub fn write_public_key(path: &Path, key: &PublicKey) -> Result<(), SignError> {
    write_new(path, key.to_pem().as_bytes(), PUBLIC_MODE)
}

/// Reads a public key file; a private key file here is a [`SignError::WrongKeyType`].
pub fn read_public_key(path: &Path) -> Result<PublicKey, SignError> {
    let (text, _) = read_limited(path)?;
    PublicKey::from_pem_at(&text, &origin(path))
}

fn origin(path: &Path) -> String {
    format!("key file {}", path.display())
}

fn io_error(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> SignError {
    let path = path.to_path_buf();
    move |source| match source.kind() {
        io::ErrorKind::NotFound => SignError::NotFound { path },
        io::ErrorKind::AlreadyExists => SignError::AlreadyExists { path },
        _ => SignError::Io { path, op, source },
    }
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), SignError> {
    match fs::symlink_metadata(path) {
        Ok(_) => {
            return Err(SignError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path, "inspect the path")(e)),
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".vmattest-key-")
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|source| SignError::Io {
            path: path.to_path_buf(),
            op: "create a temporary file in its directory",
            source,
        })?;
    tmp.as_file_mut()
        .write_all(contents)
        .map_err(io_error(path, "write the temporary file"))?;
    tmp.as_file()
        .sync_all()
        .map_err(io_error(path, "sync the temporary file"))?;
    // No-clobber rename (renameat2 RENAME_NOREPLACE, else link + unlink): an existing file
    // at `path`, even one created since the check above, is never replaced.
    tmp.persist_noclobber(path)
        .map_err(|e| io_error(path, "rename the temporary file into place")(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(path, "sync its directory"))?;
    Ok(())
}

fn file_kind(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a named pipe"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "something other than a regular file"
    }
}

/// Reads at most [`MAX_KEY_FILE_BYTES`] of UTF-8 text from a regular file.
/// The file's text and permission bits.
fn read_limited(path: &Path) -> Result<(Zeroizing<String>, u32), SignError> {
    let not_a_file = |ft| SignError::NotAFile {
        path: path.to_path_buf(),
        found: file_kind(ft),
    };
    // Checked before opening, so that a FIFO cannot block the open, and again on the
    // opened file, which is what is actually read.
    let meta = fs::metadata(path).map_err(io_error(path, "inspect the file"))?;
    if !meta.is_file() {
        return Err(not_a_file(meta.file_type()));
    }
    let file = File::open(path).map_err(io_error(path, "open the file"))?;
    let meta = file
        .metadata()
        .map_err(io_error(path, "inspect the file"))?;
    if !meta.is_file() {
        return Err(not_a_file(meta.file_type()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    let too_large = |found| SignError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_KEY_FILE_BYTES,
        found,
    };
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    // Capacity for the whole file plus one byte, so a secret is never copied by a regrowth.
    let capacity = usize::try_from(meta.len().saturating_add(1)).unwrap_or(0);
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path, "read the file"))?;
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > MAX_KEY_FILE_BYTES {
        return Err(too_large(len));
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| SignError::NotPem {
        origin: origin(path),
        found: format!("bytes that are not UTF-8 at offset {}", e.valid_up_to()),
    })?;
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    out.push_str(text);
    Ok((out, mode))
}
