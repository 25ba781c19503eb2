//! What a verifier brings to a chain: the keys it pins and, for an encrypted store, its
//! secret. Every read of a chain through this crate goes through one.

use std::path::{Path, PathBuf};

use vmattest_core::chain::SeqNo;
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::UnixTime;
use vmattest_sign::PublicKey;
use vmattest_store::{
    MAX_REVOCATIONS, NamedRevocation, PinnedKeys, ReplayOptions, StoreError, StoreSecret,
};

use crate::keys::{self, KeyError};
use crate::revoke::{self, RevokeError};
use crate::tpm::{self, TpmError};

#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Secret(#[from] TpmError),
    #[error(transparent)]
    Pinned(#[from] StoreError),
    #[error(transparent)]
    Revocation(#[from] RevokeError),
}

impl Classify for VerifierError {
    fn class(&self) -> ErrorClass {
        match self {
            VerifierError::Key(e) => e.class(),
            VerifierError::Secret(e) => e.class(),
            VerifierError::Pinned(e) => e.class(),
            VerifierError::Revocation(e) => e.class(),
        }
    }
}

/// Pinned keys (at least one), the store secret if any, and revocations handed in beside
/// the ones a store keeps.
#[derive(Debug)]
pub struct Verifier {
    keys: PinnedKeys,
    secret: Option<StoreSecret>,
    revocations: Vec<NamedRevocation>,
}

impl Verifier {
    /// Reads the pinned public keys and the secret (a secret file, or a blob sealed to this
    /// host's TPM).
    pub fn load(pubkeys: &[PathBuf], secret: Option<&Path>) -> Result<Verifier, VerifierError> {
        let keys = PinnedKeys::new(keys::pinned(pubkeys)?)?;
        let secret = secret.map(tpm::load_secret).transpose()?;
        Ok(Verifier {
            keys,
            secret,
            revocations: Vec::new(),
        })
    }

    /// Also honours the revocations in `files` (at most [`MAX_REVOCATIONS`]).
    pub fn with_revocations(mut self, files: &[PathBuf]) -> Result<Verifier, VerifierError> {
        if files.len() > MAX_REVOCATIONS {
            return Err(VerifierError::Pinned(StoreError::Input(format!(
                "{} revocation files, expected at most {MAX_REVOCATIONS}",
                files.len()
            ))));
        }
        for f in files {
            self.revocations.push(revoke::read(f)?);
        }
        Ok(self)
    }

    pub fn keys(&self) -> &[PublicKey] {
        self.keys.keys()
    }

    pub fn pinned(&self) -> &PinnedKeys {
        &self.keys
    }

    pub fn secret(&self) -> Option<&StoreSecret> {
        self.secret.as_ref()
    }

    /// Replay options up to `upto` (the head when `None`), refusing a last link older than
    /// `max_age` seconds before `now` when given.
    pub fn options(
        &self,
        upto: Option<SeqNo>,
        max_age: Option<(UnixTime, u64)>,
    ) -> ReplayOptions<'_> {
        ReplayOptions {
            upto,
            keys: &self.keys,
            secret: self.secret.as_ref(),
            max_age,
            revocations: &self.revocations,
        }
    }
}
