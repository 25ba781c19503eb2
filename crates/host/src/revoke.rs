//! Key revocations: signing one into a store, and reading the ones a verifier is handed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use vmattest_core::chain::{Revocation, SeqNo, SignedRevocation};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::UnixTime;
use vmattest_core::sig::KeyId;
use vmattest_core::wire::{HEADER_LEN, Kind};
use vmattest_sign::signing::SigningError;
use vmattest_sign::{PublicKey, Signer};
use vmattest_store::{NamedRevocation, PinnedKeys, Store, StoreError};

use crate::files::{self, FileError};

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: expected a signed key revocation: {detail}")]
    Decode { path: PathBuf, detail: String },
    #[error("signing the revocation: {0}")]
    Sign(#[source] SigningError),
}

impl Classify for RevokeError {
    fn class(&self) -> ErrorClass {
        match self {
            RevokeError::Store(e) => e.class(),
            RevokeError::File(e) => e.class(),
            RevokeError::Decode { .. } => ErrorClass::Input,
            RevokeError::Sign(e) => e.class(),
        }
    }
}

/// A revocation to sign.
#[derive(Debug)]
pub struct RevokeSpec<'a> {
    pub key: KeyId,
    pub from: SeqNo,
    pub successors: &'a [PublicKey],
    pub reason: String,
    pub signers: &'a [&'a dyn Signer],
    pub time: UnixTime,
}

/// Signs a revocation for the chain at `root` and keeps it there, once it checks against the
/// chain whose first keys are `pinned`. Returns its file in the store, and the revocation.
pub fn revoke(
    root: &Path,
    pinned: &PinnedKeys,
    spec: &RevokeSpec<'_>,
) -> Result<(String, SignedRevocation), RevokeError> {
    let store = Store::open_writer(root)?;
    let rev = Revocation {
        origin: store.origin()?,
        key: spec.key,
        from: spec.from,
        successors: spec
            .successors
            .iter()
            .map(PublicKey::to_chain_key)
            .collect(),
        reason: spec.reason.clone(),
        time: spec.time,
        key_ids: spec.signers.iter().map(|s| s.key_id()).collect(),
    };
    let signed = vmattest_sign::signing::sign(rev, spec.signers).map_err(RevokeError::Sign)?;
    let name = store.add_revocation(&signed, pinned)?;
    Ok((name, signed))
}

/// A revocation file a verifier was handed.
pub fn read(path: &Path) -> Result<NamedRevocation, RevokeError> {
    let max = (Kind::Signed.max_body() + HEADER_LEN) as u64;
    let bytes = files::read_capped(path, max, "key revocation")?;
    let rev = SignedRevocation::decode(&bytes).map_err(|e| RevokeError::Decode {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok((path.display().to_string(), rev))
}

/// A revocation as `snapshot revoke` reports it.
#[derive(Debug, Serialize)]
pub struct RevocationJson {
    pub file: String,
    pub key_id: String,
    pub from: u64,
    pub successors: Vec<String>,
    pub reason: String,
    pub signed_by: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<String>,
}

impl RevocationJson {
    pub fn new(file: &str, r: &Revocation, out: Option<&Path>) -> RevocationJson {
        RevocationJson {
            file: file.to_owned(),
            key_id: r.key.to_hex(),
            from: r.from.0,
            successors: r.successors.iter().map(|k| k.id().to_hex()).collect(),
            reason: r.reason.clone(),
            signed_by: r.key_ids.iter().map(KeyId::to_hex).collect(),
            out: out.map(|p| p.display().to_string()),
        }
    }
}

impl fmt::Display for RevocationJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "revoked key {} from seq {}", self.key_id, self.from)?;
        if !self.successors.is_empty() {
            write!(f, "; successors {}", self.successors.join(", "))?;
        }
        write!(f, " -> {}", self.file)?;
        if let Some(out) = &self.out {
            write!(f, " and {out}")?;
        }
        Ok(())
    }
}
