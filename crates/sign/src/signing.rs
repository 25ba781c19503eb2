//! Signing a signable object: the one place that turns a value and its signers into a
//! [`Signed`] envelope, for records, links, evidence, reports and statements alike.

use vmattest_core::class::{Classify, ErrorClass};
use vmattest_core::record::{RecordError, Signable, SignatureEntry, Signed, check_signer_ids};

use crate::{KeyId, SignError, Signer};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The value does not encode, or does not name exactly these signers in this order.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A signer refused or failed to sign.
    #[error("signing with key {key_id}")]
    Signer {
        key_id: KeyId,
        #[source]
        source: Box<SignError>,
    },
}

impl Classify for SigningError {
    fn class(&self) -> ErrorClass {
        match self {
            // Signers that differ from the keys the value names are the caller's mistake here,
            // not a record that failed its check.
            SigningError::Record(RecordError::SignerCount { .. })
            | SigningError::Record(RecordError::UnnamedSigner { .. }) => ErrorClass::Input,
            SigningError::Record(e) => e.class(),
            SigningError::Signer { source, .. } => source.class(),
        }
    }
}

/// Signs `value` with every signer, in order. The value must name exactly these signers' keys
/// in this order (its `key_ids`); that is checked before anything is signed, so a remote or
/// TPM signer is never asked for a signature that could not be used.
pub fn sign<T: Signable>(value: T, signers: &[&dyn Signer]) -> Result<Signed<T>, SigningError> {
    let ids: Vec<KeyId> = signers.iter().map(|s| s.key_id()).collect();
    check_signer_ids(value.key_ids(), &ids)?;
    let mut signed = Signed::new(value)?;
    let message = signed.message();
    for (signer, key_id) in signers.iter().zip(ids) {
        let signature = signer
            .sign(&message)
            .map_err(|source| SigningError::Signer {
                key_id,
                source: Box::new(source),
            })?;
        signed.signatures.push(SignatureEntry {
            alg: signer.alg(),
            key_id,
            signature,
        });
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use vmattest_core::alg::HashAlg;
    use vmattest_core::record::{ImageMeasurement, MeasurementRecord, SignedRecord, UnixTime};
    use vmattest_core::tree::TreeParams;

    use super::*;
    use crate::record::{RecordSigError, verify_signed};
    use crate::{SecretKey, SigAlg};

    fn record(key_ids: Vec<KeyId>) -> MeasurementRecord {
        let params = TreeParams::new(HashAlg::Blake3, &[]).unwrap();
        MeasurementRecord {
            time: UnixTime { secs: 7, nanos: 0 },
            nonce: vec![1, 2],
            key_ids,
            images: vec![ImageMeasurement {
                path: "ram".into(),
                root: params.alg().zero_digest(),
                params,
                len: 8192,
            }],
        }
    }

    #[test]
    fn co_signed_record_round_trips_and_verifies_under_both_keys() {
        let a = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let b = SecretKey::generate(SigAlg::EcdsaP384).unwrap();
        let value = record(vec![a.key_id(), b.key_id()]);
        let signed = sign(value, &[&a, &b]).unwrap();
        let decoded = SignedRecord::decode(&signed.encode().unwrap()).unwrap();
        verify_signed(&decoded, &[a.public_key(), b.public_key()]).unwrap();
    }

    #[test]
    fn signers_other_than_the_named_keys_are_refused_before_signing() {
        let a = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let b = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let e = sign(record(vec![a.key_id(), b.key_id()]), &[&a]).unwrap_err();
        assert!(matches!(
            e,
            SigningError::Record(RecordError::SignerCount { named: 2, found: 1 })
        ));
        assert_eq!(e.class(), ErrorClass::Input);
        let e = sign(record(vec![a.key_id()]), &[&b]).unwrap_err();
        assert!(matches!(
            e,
            SigningError::Record(RecordError::UnnamedSigner { index: 0, .. })
        ));
    }

    #[test]
    fn a_signature_by_an_unpinned_key_fails_verification() {
        let a = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let other = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let signed = sign(record(vec![a.key_id()]), &[&a]).unwrap();
        let e = verify_signed(&signed, &[other.public_key()]).unwrap_err();
        assert!(matches!(e, RecordSigError::UnknownSigner { index: 0, .. }));
        assert_eq!(e.class(), ErrorClass::Verification);
    }

    #[test]
    fn a_tampered_signature_fails_verification() {
        let a = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let mut signed = sign(record(vec![a.key_id()]), &[&a]).unwrap();
        signed.signatures[0].signature[5] ^= 1;
        let e = verify_signed(&signed, &[a.public_key()]).unwrap_err();
        assert!(matches!(
            e,
            RecordSigError::Invalid {
                reason: SignError::BadSignature { .. },
                ..
            }
        ));
        assert_eq!(e.class(), ErrorClass::Verification);
        signed.signatures[0].signature.pop();
        let e = verify_signed(&signed, &[a.public_key()]).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Verification);
    }

    #[test]
    fn a_pinned_key_that_did_not_sign_fails_verification() {
        let a = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let b = SecretKey::generate(SigAlg::Ed25519).unwrap();
        let signed = sign(record(vec![a.key_id()]), &[&a]).unwrap();
        let e = verify_signed(&signed, &[a.public_key(), b.public_key()]).unwrap_err();
        assert!(matches!(e, RecordSigError::MissingSigner { .. }));
        assert_eq!(e.class(), ErrorClass::Verification);
    }
}
