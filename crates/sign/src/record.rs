//! Checking the signatures of a signed object against pinned public keys.

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::{Signable, Signed};

use crate::{KeyId, PublicKey, SigAlg, SignError};

#[derive(Debug, thiserror::Error)]
pub enum RecordSigError {
    /// The signer is not among the pinned keys: the caller gave the wrong keys.
    #[error(
        "signature {index} is by key {key_id}, expected one of the given public keys ({given})"
    )]
    UnknownSigner {
        index: usize,
        key_id: KeyId,
        given: String,
    },
    #[error("signature {index} claims {claimed} but key {key_id} is {actual}")]
    AlgorithmMismatch {
        index: usize,
        key_id: KeyId,
        claimed: SigAlg,
        actual: SigAlg,
    },
    #[error("signature {index}: {reason}")]
    Invalid { index: usize, reason: SignError },
    /// A pinned key did not sign: pinning several keys means all of them must sign.
    #[error("no signature by the given key {key_id}; every given key must sign")]
    MissingSigner { key_id: KeyId },
}

/// Every way a signed object can fail its pinned keys is a verification failure: a signer
/// nobody pinned is exactly what pinning is meant to catch, not a usage error.
impl Classify for RecordSigError {
    fn class(&self) -> ErrorClass {
        match self {
            RecordSigError::UnknownSigner { .. }
            | RecordSigError::AlgorithmMismatch { .. }
            | RecordSigError::MissingSigner { .. } => ErrorClass::Verification,
            RecordSigError::Invalid { reason, .. } => reason.class(),
        }
    }
}

/// Every signature must come from one of `keys`, under the algorithm of that key, and verify;
/// and every key in `keys` must have signed (a co-signed record is all-of-N, never any-of-N).
pub fn verify_signed<T: Signable>(
    signed: &Signed<T>,
    keys: &[PublicKey],
) -> Result<(), RecordSigError> {
    let message = signed.message();
    for (index, s) in signed.signatures.iter().enumerate() {
        let Some(key) = keys.iter().find(|k| k.key_id() == s.key_id) else {
            let given: Vec<String> = keys.iter().map(|k| k.key_id().to_hex()).collect();
            return Err(RecordSigError::UnknownSigner {
                index,
                key_id: s.key_id,
                given: given.join(", "),
            });
        };
        if key.alg() != s.alg {
            return Err(RecordSigError::AlgorithmMismatch {
                index,
                key_id: s.key_id,
                claimed: s.alg,
                actual: key.alg(),
            });
        }
        key.verify(&message, &s.signature)
            .map_err(|reason| RecordSigError::Invalid { index, reason })?;
    }
    if let Some(k) = keys
        .iter()
        .find(|k| !signed.signatures.iter().any(|s| s.key_id == k.key_id()))
    {
        return Err(RecordSigError::MissingSigner { key_id: k.key_id() });
    }
    Ok(())
}
