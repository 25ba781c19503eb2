//! The EAR key ring: the current signing key (`STATE/ear-key.pem`) and the public keys it
//! replaced (`STATE/ear-keys/KID.pub.pem`), which stay published in the JWKS so that results
//! signed before a rotation still verify.
//!
//! A rotation writes the new key beside the current one, records the old public key, then
//! renames the new key over the current one: a crash leaves either key current, never none.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};
use vmattest_sign::{PublicKey, SecretKey, SigAlg};

use crate::ear::{AlgNames, EarSigner, jwk};
use crate::error::ServerError;

const CURRENT: &str = "ear-key.pem";
const NEXT: &str = "ear-key.pem.next";
const RETIRED_DIR: &str = "ear-keys";
const RETIRED_SUFFIX: &str = ".pub.pem";
/// Retired keys kept published at most; older ones are dropped from the JWKS (files stay).
const MAX_RETIRED: usize = 64;

#[derive(Debug)]
pub struct EarKeys {
    dir: PathBuf,
    names: AlgNames,
    current: RwLock<Arc<EarSigner>>,
    /// Newest first.
    retired: RwLock<Vec<PublicKey>>,
    rotating: tokio::sync::Mutex<()>,
}

fn key_err(path: &Path) -> impl FnOnce(vmattest_sign::SignError) -> ServerError + '_ {
    move |source| ServerError::Key {
        path: path.display().to_string(),
        source: Box::new(source),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl EarKeys {
    /// Loads the ring from the state directory, making an `alg` key on first start.
    pub fn load(dir: &Path, alg: SigAlg, names: AlgNames) -> Result<EarKeys, ServerError> {
        let current = EarSigner::load_or_create(&dir.join(CURRENT), alg, names)?;
        let retired = read_retired(&dir.join(RETIRED_DIR), current.kid())?;
        Ok(EarKeys {
            dir: dir.to_path_buf(),
            names,
            current: RwLock::new(Arc::new(current)),
            retired: RwLock::new(retired),
            rotating: tokio::sync::Mutex::new(()),
        })
    }

    /// The key that signs from now on.
    pub fn current(&self) -> Arc<EarSigner> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// RFC 7517 key set: the current key first, then retired ones, newest first.
    pub fn jwks(&self) -> Value {
        let mut keys = vec![self.current().jwk()];
        if let Ok(retired) = self.retired.read() {
            keys.extend(retired.iter().map(|k| jwk(k, self.names)));
        }
        json!({ "keys": keys })
    }

    /// Replaces the current key by a new one of `alg` (default: the current key's type).
    pub async fn rotate(&self, alg: Option<SigAlg>) -> Result<Arc<EarSigner>, ServerError> {
        let _one = self.rotating.lock().await;
        let old = self.current();
        let alg = alg.unwrap_or_else(|| old.alg());
        let dir = self.dir.clone();
        let names = self.names;
        let old_public = old.public_key();
        let new = tokio::task::spawn_blocking(move || rotate_files(&dir, &old_public, alg, names))
            .await
            .map_err(|e| ServerError::EarKey(format!("rotation task: {e}")))??;
        let new = Arc::new(new);
        if let Ok(mut r) = self.retired.write() {
            r.insert(0, old.public_key());
            r.truncate(MAX_RETIRED);
        }
        if let Ok(mut c) = self.current.write() {
            *c = new.clone();
        }
        tracing::info!(
            old = old.kid(),
            new = new.kid(),
            alg = new.jose_alg(),
            "EAR key rotated"
        );
        Ok(new)
    }
}

fn rotate_files(
    dir: &Path,
    old: &PublicKey,
    alg: SigAlg,
    names: AlgNames,
) -> Result<EarSigner, ServerError> {
    let next = dir.join(NEXT);
    // A rotation that crashed before its rename left this behind; it never became current.
    match std::fs::remove_file(&next) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&next)(e)),
        _ => {}
    }
    let key = SecretKey::generate(alg).map_err(key_err(&next))?;
    vmattest_sign::keyfile::write_secret_key(&next, &key).map_err(key_err(&next))?;
    let retired = dir.join(RETIRED_DIR);
    crate::private::state_dir(&retired)?;
    let old_path = retired.join(format!("{}{RETIRED_SUFFIX}", old.key_id().to_hex()));
    match vmattest_sign::keyfile::write_public_key(&old_path, old) {
        Ok(()) | Err(vmattest_sign::SignError::AlreadyExists { .. }) => {}
        Err(e) => return Err(key_err(&old_path)(e)),
    }
    let current = dir.join(CURRENT);
    std::fs::rename(&next, &current).map_err(io_err(&current))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    EarSigner::new(key, names)
        .map_err(|e| ServerError::EarKey(format!("{}: {e}", current.display())))
}

/// The retired public keys, newest file first; the current key's own record is skipped (a
/// rotation that crashed after recording it).
fn read_retired(dir: &Path, current_kid: &str) -> Result<Vec<PublicKey>, ServerError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(kid) = name.strip_suffix(RETIRED_SUFFIX) else {
            continue;
        };
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if !meta.is_file() {
            return Err(ServerError::Permissions {
                path: path.display().to_string(),
                problem: "expected a regular file (a retired EAR public key)".into(),
            });
        }
        let key = vmattest_sign::keyfile::read_public_key(&path).map_err(key_err(&path))?;
        if key.key_id().to_hex() != kid {
            return Err(ServerError::EarKey(format!(
                "{}: expected key id {kid} (the file name), found {}",
                path.display(),
                key.key_id().to_hex()
            )));
        }
        if kid != current_kid {
            let modified = meta.modified().ok();
            keys.push((modified, key));
        }
    }
    keys.sort_by_key(|k| std::cmp::Reverse(k.0));
    Ok(keys.into_iter().map(|(_, k)| k).take(MAX_RETIRED).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use vmattest_sign::Signer as _;

    use super::*;

    fn kids(ring: &EarKeys) -> Vec<String> {
        ring.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn rotation_keeps_old_keys_published_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ring = EarKeys::load(dir.path(), SigAlg::Ed25519, AlgNames::default()).unwrap();
        let first = ring.current().kid().to_owned();
        // A rotation that crashed before its rename left this: it never became current.
        std::fs::write(dir.path().join(NEXT), b"junk").unwrap();
        let second = ring.rotate(None).await.unwrap().kid().to_owned();
        let third = ring.rotate(Some(SigAlg::EcdsaP384)).await.unwrap();
        assert_eq!(third.jose_alg(), "ES384");
        assert_eq!(kids(&ring), [third.kid(), second.as_str(), first.as_str()]);
        let again = EarKeys::load(dir.path(), SigAlg::Ed25519, AlgNames::default()).unwrap();
        assert_eq!(kids(&again), kids(&ring));
        assert!(!dir.path().join(NEXT).exists());
    }

    #[test]
    fn regression_a_retired_key_under_another_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let retired = dir.path().join(RETIRED_DIR);
        std::fs::create_dir(&retired).unwrap();
        let key = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let forged = retired.join(format!("{}{RETIRED_SUFFIX}", "00".repeat(32)));
        vmattest_sign::keyfile::write_public_key(&forged, &key.public_key()).unwrap();
        let e = EarKeys::load(dir.path(), SigAlg::Ed25519, AlgNames::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected key id"), "{e}");
    }
}
