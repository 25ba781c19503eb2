//! The server's files are private to its user: the state directory 0700 (an existing looser
//! one is tightened; a symlink or another user's directory is refused), and the SQLite database
//! with its -wal, -shm and -journal files 0600. SQLite gives its side files the database file's
//! mode, so creating that file 0600 before SQLite opens it covers them too.

use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use crate::error::ServerError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn refuse(path: &Path, problem: String) -> ServerError {
    ServerError::Permissions {
        path: path.display().to_string(),
        problem,
    }
}

/// Sets `mode` on an existing file or directory of ours if it allows more than `mode`.
fn tighten(path: &Path, meta: &std::fs::Metadata, mode: u32) -> Result<(), ServerError> {
    let uid = rustix::process::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(refuse(
            path,
            format!(
                "owned by uid {}, expected uid {uid} (the server's user)",
                meta.uid()
            ),
        ));
    }
    let found = meta.permissions().mode() & 0o777;
    if found & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))?;
        tracing::warn!(path = %path.display(), "mode {found:04o} tightened to {mode:04o}");
    }
    Ok(())
}

/// Creates `dir` (mode 0700), or checks and tightens an existing one.
pub fn state_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => Err(refuse(
            dir,
            "is a symbolic link; expected a directory (give its real path)".into(),
        )),
        Ok(meta) if !meta.is_dir() => Err(refuse(dir, "expected a directory".into())),
        Ok(meta) => tighten(dir, &meta, 0o700),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir)),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Creates the SQLite database file empty with mode 0600 (SQLite takes an empty file for a new
/// database), or tightens it and any side files it has.
pub fn sqlite_files(db: &Path) -> Result<(), ServerError> {
    if let Err(e) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
        && e.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(io(db)(e));
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = Path::new(&name);
        match std::fs::metadata(path) {
            Ok(meta) => tighten(path, &meta, 0o600)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
    Ok(())
}
