//! TPM 2.0 backend for vmattest: a TPM-held ECDSA P-384 signing key (usable as a chain signer
//! through [`TpmSigner`], which implements [`vmattest_sign::Signer`]), a restricted ECDSA P-256
//! attestation key (AK) for quotes and certifications, PCR access, and secrets sealed to PCR
//! values.
//!
//! Keys are never stored in the TPM: each call re-creates them with `TPM2_CreatePrimary` from a
//! fixed template under the owner hierarchy, which yields the same key every time for the same
//! owner seed. Every transient handle a call creates is flushed before it returns, so the crate
//! also works against a TPM without a resource manager (swtpm has three transient slots).
//!
//! The TPM code is behind the `tpm` Cargo feature (it links libtss2 through `tss-esapi`). Without
//! the feature the public API is the same, and [`Tpm::open`] fails with [`TpmError::NotBuilt`].

mod blob;
mod config;
#[cfg(feature = "tpm")]
mod esapi;
#[cfg(not(feature = "tpm"))]
mod stub;

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest as _, Sha256, Sha384};
use vmattest_core::class::{Classify, ErrorClass};
use vmattest_sign::{PublicKey, SigAlg, SignError, Signer};
use zeroize::Zeroizing;

pub use crate::blob::{BlobError, MAGIC as SEALED_MAGIC, SealedBlob};
pub use crate::config::{ConfigError, TCTI_ENV, TpmConfig, TpmTarget};
#[cfg(feature = "tpm")]
use crate::esapi::Backend;
#[cfg(not(feature = "tpm"))]
use crate::stub::Backend;

/// Largest secret [`Tpm::seal`] accepts (the TPM's `MAX_SYM_DATA`).
pub const MAX_SEAL_LEN: usize = 128;
/// Largest qualifying data (nonce) a quote or certification carries (`TPM2B_DATA`).
pub const MAX_QUALIFYING_LEN: usize = 64;
/// Highest PCR index accepted (a PC-client TPM has PCRs 0 to 23).
pub const MAX_PCR: u32 = 23;
/// The persistent handle a provisioned vmattest key would live at; [`TpmInfo`] reports whether
/// it is occupied. This crate never writes it.
pub const PERSISTENT_KEY_HANDLE: u32 = 0x8101_0a77;
/// The TPM algorithm id of SHA-256, the first two bytes of every name this crate computes.
pub const TPM_ALG_SHA256: u16 = 0x000b;

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("built without TPM support (enable the `tpm` feature)")]
    NotBuilt,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("cannot open TPM {target}: {detail}")]
    Open { target: String, detail: String },
    #[error("TPM {op} failed: {detail}")]
    Command { op: &'static str, detail: String },
    #[error("TPM {op}: unexpected answer: {detail}")]
    Unexpected { op: &'static str, detail: String },
    #[error("invalid {what}: {detail}")]
    Input { what: &'static str, detail: String },
    #[error("unseal refused: {}", describe_pcrs(.pcrs))]
    PcrMismatch { pcrs: Vec<u32> },
}

impl Classify for TpmError {
    fn class(&self) -> ErrorClass {
        match self {
            TpmError::NotBuilt
            | TpmError::Open { .. }
            | TpmError::Command { .. }
            | TpmError::Unexpected { .. } => ErrorClass::Environment,
            TpmError::Config(e) => e.class(),
            TpmError::Blob(e) => e.class(),
            TpmError::Input { .. } => ErrorClass::Input,
            // The host's measured state is not the one the secret was sealed to.
            TpmError::PcrMismatch { .. } => ErrorClass::Verification,
        }
    }
}

fn describe_pcrs(pcrs: &[u32]) -> String {
    let list = pcrs
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if pcrs.len() == 1 {
        format!("PCR {list} differs from its value at seal time")
    } else {
        format!("PCRs {list} differ from their values at seal time")
    }
}

/// A PCR bank. Only SHA-256 is used by vmattest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PcrBank {
    Sha256,
}

/// What [`Tpm::info`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmInfo {
    /// `TPM2_PT_MANUFACTURER` as its four ASCII characters, trailing spaces and NULs removed
    /// (e.g. "IBM" for swtpm).
    pub manufacturer: String,
    /// `TPM2_PT_MANUFACTURER` as the raw value.
    pub manufacturer_id: u32,
    /// `TPM2_PT_FIRMWARE_VERSION_1` in the high and `_2` in the low 32 bits.
    pub firmware_version: u64,
    /// Banks with at least one PCR allocated, by name ("sha1", "sha256", ...).
    pub pcr_banks: Vec<String>,
    /// Whether [`PERSISTENT_KEY_HANDLE`] holds an object.
    pub persistent_key_present: bool,
}

/// The public half of a TPM key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPublic {
    /// Uncompressed SEC1 point `0x04 || X || Y`, each coordinate left-padded to the curve size:
    /// 97 bytes for the P-384 signing key, 65 for the P-256 attestation key.
    pub sec1: Vec<u8>,
    /// The marshalled `TPMT_PUBLIC`.
    pub tpmt_public: Vec<u8>,
    /// The TPM name: `nameAlg` (SHA-256, `00 0b`) then SHA-256 of `tpmt_public`; 34 bytes.
    pub name: Vec<u8>,
}

impl KeyPublic {
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    pub(crate) fn new(sec1: Vec<u8>, tpmt_public: Vec<u8>) -> Self {
        let name = name_of(&tpmt_public);
        KeyPublic {
            sec1,
            tpmt_public,
            name,
        }
    }
}

impl fmt::Debug for KeyPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPublic")
            .field("name", &hex_string(&self.name))
            .finish()
    }
}

/// `00 0b || SHA-256(tpmt_public)`: the TPM name of an object with nameAlg SHA-256.
pub fn name_of(tpmt_public: &[u8]) -> Vec<u8> {
    let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(tpmt_public));
    name
}

/// An ECDSA P-256 signature (by the attestation key) as two 32-byte big-endian integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcdsaSignature {
    pub r: [u8; 32],
    pub s: [u8; 32],
}

impl EcdsaSignature {
    /// `r || s`, 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }
}

/// An ECDSA P-384 signature (by the signing key) as two 48-byte big-endian integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcdsaP384Signature {
    pub r: [u8; 48],
    pub s: [u8; 48],
}

impl EcdsaP384Signature {
    /// `r || s`, 96 bytes: the raw form `vmattest_sign` uses for [`SigAlg::EcdsaP384`].
    pub fn to_bytes(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        out[..48].copy_from_slice(&self.r);
        out[48..].copy_from_slice(&self.s);
        out
    }
}

/// A `TPM2_Certify` of the signing key by the attestation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certification {
    /// The marshalled `TPMS_ATTEST` (type `TPM_ST_ATTEST_CERTIFY`), the signed message.
    pub attest: Vec<u8>,
    /// ECDSA-SHA256 by the AK over `attest`.
    pub signature: EcdsaSignature,
}

/// A `TPM2_Quote` over SHA-256 PCRs by the attestation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The marshalled `TPMS_ATTEST` (type `TPM_ST_ATTEST_QUOTE`), the signed message.
    pub attest: Vec<u8>,
    /// ECDSA-SHA256 by the AK over `attest`.
    pub signature: EcdsaSignature,
    /// The quoted PCR indices, ascending.
    pub pcrs: Vec<u32>,
    /// The SHA-256 values of `pcrs`, read right after the quote, in the same order.
    pub pcr_values: Vec<[u8; 32]>,
}

/// A connection to one TPM.
pub struct Tpm {
    backend: Backend,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tpm").finish_non_exhaustive()
    }
}

impl Tpm {
    /// Connects to the TPM `config` names. Fails with [`TpmError::NotBuilt`] without the `tpm`
    /// feature.
    pub fn open(config: &TpmConfig) -> Result<Self, TpmError> {
        Ok(Tpm {
            backend: Backend::open(config)?,
        })
    }

    pub fn info(&mut self) -> Result<TpmInfo, TpmError> {
        self.backend.info()
    }

    /// The unrestricted ECDSA P-384 (SHA-384) signing key, non-exportable.
    pub fn signing_key(&mut self) -> Result<KeyPublic, TpmError> {
        self.backend.signing_key()
    }

    /// The restricted ECDSA P-256 (SHA-256) attestation key used by [`Tpm::quote`] and
    /// [`Tpm::certify`].
    pub fn attestation_key(&mut self) -> Result<KeyPublic, TpmError> {
        self.backend.attestation_key()
    }

    /// Signs a SHA-384 digest computed outside the TPM with the signing key.
    pub fn sign_digest(&mut self, digest: &[u8; 48]) -> Result<EcdsaP384Signature, TpmError> {
        Ok(self.backend.sign_digest(digest)?.0)
    }

    /// [`Tpm::sign_digest`], failing unless the key that signed has the SEC1 point `expected`.
    fn sign_digest_by(
        &mut self,
        digest: &[u8; 48],
        expected: &[u8],
    ) -> Result<EcdsaP384Signature, TpmError> {
        let (sig, sec1) = self.backend.sign_digest(digest)?;
        if sec1 != expected {
            return Err(TpmError::Unexpected {
                op: "Sign",
                detail: "the signing key differs from the one opened (was the owner hierarchy \
                         cleared?)"
                    .to_owned(),
            });
        }
        Ok(sig)
    }

    /// `TPM2_Certify` of the signing key by the attestation key, with `nonce` as qualifying
    /// data (at most [`MAX_QUALIFYING_LEN`] bytes).
    pub fn certify(&mut self, nonce: &[u8]) -> Result<Certification, TpmError> {
        check_qualifying(nonce)?;
        self.backend.certify(nonce)
    }

    /// The ECC P-256 endorsement key from the TCG default template, as an uncompressed SEC1
    /// point.
    pub fn ek_public(&mut self) -> Result<[u8; 65], TpmError> {
        self.backend.ek_public()
    }

    /// Recovers a credential made for this TPM's EK and its attestation key
    /// (`vmattest_quote::make_credential`): `TPM2_ActivateCredential` refuses one made for
    /// another TPM or another key.
    pub fn activate_credential(
        &mut self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.backend
            .activate_credential(id_object, encrypted_secret)
    }

    /// The EK certificate (DER) the manufacturer provisioned in NV, if any.
    pub fn ek_certificate(&mut self) -> Option<Vec<u8>> {
        self.backend.ek_certificate()
    }

    /// Reads PCRs of `bank`. The values come back in ascending PCR order (duplicates removed).
    pub fn pcr_read(&mut self, bank: PcrBank, pcrs: &[u32]) -> Result<Vec<[u8; 32]>, TpmError> {
        let PcrBank::Sha256 = bank;
        let pcrs = normalize_pcrs(pcrs)?;
        self.backend.pcr_read(&pcrs)
    }

    /// Extends the SHA-256 bank of PCR `index` with `digest` (other banks are not touched).
    pub fn pcr_extend(&mut self, index: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        normalize_pcrs(&[index])?;
        self.backend.pcr_extend(index, digest)
    }

    /// Resets a resettable PCR (16, the debug PCR, or 23 at locality 0).
    pub fn pcr_reset(&mut self, index: u32) -> Result<(), TpmError> {
        normalize_pcrs(&[index])?;
        self.backend.pcr_reset(index)
    }

    /// Quotes the SHA-256 values of `pcrs` with the attestation key; `qualifying` (at most
    /// [`MAX_QUALIFYING_LEN`] bytes) lands in the attest's `extraData`.
    pub fn quote(&mut self, pcrs: &[u32], qualifying: &[u8]) -> Result<Quote, TpmError> {
        check_qualifying(qualifying)?;
        let pcrs = normalize_pcrs(pcrs)?;
        self.backend.quote(&pcrs, qualifying)
    }

    /// Seals `secret` (1 to [`MAX_SEAL_LEN`] bytes) under the storage primary, to the current
    /// SHA-256 values of `pcrs` (TPM2_PolicyPCR).
    pub fn seal(&mut self, secret: &[u8], pcrs: &[u32]) -> Result<SealedBlob, TpmError> {
        if secret.is_empty() || secret.len() > MAX_SEAL_LEN {
            return Err(TpmError::Input {
                what: "secret",
                detail: format!("expected 1 to {MAX_SEAL_LEN} bytes, found {}", secret.len()),
            });
        }
        let pcrs = normalize_pcrs(pcrs)?;
        self.backend.seal(secret, &pcrs)
    }

    /// Unseals a blob made by [`Tpm::seal`]. When the PCR policy is not met, fails with
    /// [`TpmError::PcrMismatch`] naming the PCRs whose value changed since sealing.
    pub fn unseal(&mut self, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.backend.unseal(blob)
    }
}

/// The TPM signing key as a workspace [`Signer`] ([`SigAlg::EcdsaP384`]): `sign` hashes the
/// message with SHA-384, has the TPM sign the digest, and returns `r || s` (96 bytes), which
/// [`PublicKey::verify`] accepts with the public key alone.
///
/// The [`Tpm`] is held in a [`Mutex`] (its commands need `&mut`), so one `TpmSigner` can be
/// shared between threads; their signatures are serialized. Each signature re-creates the key
/// from the owner seed and checks that it is still the key [`TpmSigner::new`] read.
#[derive(Debug)]
pub struct TpmSigner {
    tpm: Mutex<Tpm>,
    public: KeyPublic,
    key: PublicKey,
}

impl TpmSigner {
    /// Opens the TPM `config` names and reads its signing key. Fails with
    /// [`TpmError::NotBuilt`] without the `tpm` feature.
    pub fn open(config: &TpmConfig) -> Result<Self, TpmError> {
        Self::new(Tpm::open(config)?)
    }

    /// Reads the signing key of an open TPM.
    pub fn new(mut tpm: Tpm) -> Result<Self, TpmError> {
        let public = tpm.signing_key()?;
        let key = PublicKey::from_raw(SigAlg::EcdsaP384, &public.sec1).map_err(|e| {
            TpmError::Unexpected {
                op: "CreatePrimary (signing key)",
                detail: format!("the signing key is not a usable P-384 key: {e}"),
            }
        })?;
        Ok(TpmSigner {
            tpm: Mutex::new(tpm),
            public,
            key,
        })
    }

    /// The signing key as the TPM describes it (SEC1 point, `TPMT_PUBLIC` and name), e.g. to
    /// match against a [`Certification`].
    pub fn tpm_public(&self) -> &KeyPublic {
        &self.public
    }

    /// Like [`Signer::sign`] but with the TPM's own error, which [`Signer::sign`] can only
    /// report as [`SignError::SigningFailed`].
    pub fn sign_message(&self, message: &[u8]) -> Result<EcdsaP384Signature, TpmError> {
        let digest: [u8; 48] = Sha384::digest(message).into();
        self.lock().sign_digest_by(&digest, &self.public.sec1)
    }

    /// [`Tpm::certify`] of this signing key by the attestation key.
    pub fn certify(&self, nonce: &[u8]) -> Result<Certification, TpmError> {
        self.lock().certify(nonce)
    }

    pub fn into_inner(self) -> Tpm {
        self.tpm
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A panic cannot happen while the lock is held in this crate; if a caller's did, the TPM
    /// is still usable (every command flushes what it created), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Tpm> {
        self.tpm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Signer for TpmSigner {
    fn alg(&self) -> SigAlg {
        SigAlg::EcdsaP384
    }

    fn public_key(&self) -> PublicKey {
        self.key.clone()
    }

    fn key_id(&self) -> vmattest_sign::KeyId {
        self.key.key_id()
    }

    /// TPM failures become [`SignError::SigningFailed`]; [`TpmSigner::sign_message`] keeps
    /// the detail.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_message(msg)
            .map(|sig| sig.to_bytes().to_vec())
            .map_err(|_| SignError::SigningFailed {
                alg: SigAlg::EcdsaP384,
            })
    }
}

fn check_qualifying(data: &[u8]) -> Result<(), TpmError> {
    if data.len() > MAX_QUALIFYING_LEN {
        return Err(TpmError::Input {
            what: "qualifying data",
            detail: format!(
                "expected at most {MAX_QUALIFYING_LEN} bytes, found {}",
                data.len()
            ),
        });
    }
    Ok(())
}

/// Sorted, without duplicates, each at most [`MAX_PCR`], and not empty.
fn normalize_pcrs(pcrs: &[u32]) -> Result<Vec<u32>, TpmError> {
    if let Some(bad) = pcrs.iter().find(|&&p| p > MAX_PCR) {
        return Err(TpmError::Input {
            what: "PCR index",
            detail: format!("expected 0 to {MAX_PCR}, found {bad}"),
        });
    }
    if pcrs.is_empty() {
        return Err(TpmError::Input {
            what: "PCR selection",
            detail: "expected at least one PCR, found none".to_owned(),
        });
    }
    let mut out = pcrs.to_vec();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::cast_possible_truncation
    )]

    use super::*;

    #[cfg(not(feature = "tpm"))]
    #[test]
    fn without_feature_open_is_not_built() {
        let config = TpmConfig::tcti("swtpm:host=127.0.0.1,port=2321");
        let err = TpmSigner::open(&config).unwrap_err();
        assert!(matches!(err, TpmError::NotBuilt));
        let err = Tpm::open(&config).unwrap_err();
        assert!(matches!(err, TpmError::NotBuilt));
        assert_eq!(
            err.to_string(),
            "built without TPM support (enable the `tpm` feature)"
        );
    }

    #[test]
    fn tpm_signer_is_a_workspace_signer() {
        fn signer<T: Signer>() {}
        signer::<TpmSigner>();
    }

    #[test]
    fn p384_signature_bytes_are_r_then_s() {
        let sig = EcdsaP384Signature {
            r: [1; 48],
            s: [2; 48],
        };
        let bytes = sig.to_bytes();
        assert_eq!(bytes.len(), vmattest_sign::signature_len(SigAlg::EcdsaP384));
        assert_eq!(&bytes[..48], &[1; 48]);
        assert_eq!(&bytes[48..], &[2; 48]);
    }

    #[test]
    fn a_missing_tpm_is_environment_and_a_changed_pcr_is_verification() {
        use vmattest_core::class::{Classify as _, ErrorClass};
        assert_eq!(TpmError::NotBuilt.class(), ErrorClass::Environment);
        let nothing = ConfigError::NothingConfigured {
            device: "/dev/tpmrm0".into(),
            env: TCTI_ENV,
        };
        assert_eq!(TpmError::from(nothing).class(), ErrorClass::Environment);
        let failed = TpmError::Command {
            op: "unseal",
            detail: "TPM_RC_FAILURE".into(),
        };
        assert_eq!(failed.class(), ErrorClass::Environment);
        let changed = TpmError::PcrMismatch { pcrs: vec![16] };
        assert_eq!(changed.class(), ErrorClass::Verification);
        assert_eq!(normalize_pcrs(&[]).unwrap_err().class(), ErrorClass::Input);
        let short = SealedBlob::from_bytes(b"VMATSEAL").unwrap_err();
        assert_eq!(TpmError::from(short).class(), ErrorClass::Input);
    }

    #[test]
    fn pcr_mismatch_message() {
        let one = TpmError::PcrMismatch { pcrs: vec![16] };
        assert_eq!(
            one.to_string(),
            "unseal refused: PCR 16 differs from its value at seal time"
        );
        let two = TpmError::PcrMismatch { pcrs: vec![7, 16] };
        assert_eq!(
            two.to_string(),
            "unseal refused: PCRs 7, 16 differ from their values at seal time"
        );
    }

    #[test]
    fn pcr_selection_is_checked_and_sorted() {
        assert_eq!(normalize_pcrs(&[16, 0, 16]).unwrap(), vec![0, 16]);
        assert!(normalize_pcrs(&[]).is_err());
        let err = normalize_pcrs(&[24]).unwrap_err().to_string();
        assert!(err.contains("expected 0 to 23, found 24"), "{err}");
    }

    #[test]
    fn name_is_alg_then_sha256() {
        let name = name_of(b"abc");
        assert_eq!(name.len(), 34);
        assert_eq!(&name[..2], &[0x00, 0x0b]);
        assert_eq!(
            hex_string(&name[2..]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
