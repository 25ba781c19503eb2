//! Pure-Rust verifier of TPM 2.0 evidence from public data only: no TPM, no libtss2.
//!
//! - [`parse_attest`]: `TPMS_ATTEST` (quote or certify) as signed by the TPM.
//! - [`parse_signature`] / [`Signature::from_raw`]: ECDSA P-256 SHA-256 signatures.
//! - [`parse_public_ecc_p256`] / [`PublicKey::from_spki_pem`] / [`PublicKey::from_sec1`]:
//!   attestation and certified keys, with the TPM name of a `TPMT_PUBLIC`.
//! - [`verify_quote`] / [`verify_certify`]: signature, type, nonce and PCRs or name.
//! - [`make_credential`]: `TPM2_MakeCredential` for an ECC P-256 EK, in software.
//!
//! All structures are big-endian as marshalled by the TPM. Parsers cap every length at its
//! specification maximum, refuse truncation and trailing bytes, and name the structure,
//! field and offset of the first problem.

mod attest;
mod credential;
mod keycert;
mod marshal;
mod public;
mod signature;
mod verify;

pub use attest::{
    Attest, AttestType, Attested, ClockInfo, MAX_ATTEST_LEN, PcrSelection, format_selection,
    parse_attest,
};
pub use credential::{CredentialError, MAX_CREDENTIAL_LEN, MadeCredential, make_credential};
pub use keycert::{KeyCertError, KeyCertification, check_key_certification};
pub use marshal::{
    ParseError, TPM_ALG_ECC, TPM_ALG_ECDSA, TPM_ALG_NULL, TPM_ALG_SHA256, TPM_ECC_NIST_P256,
    TPM_GENERATED_VALUE, TPM_ST_ATTEST_CERTIFY, TPM_ST_ATTEST_QUOTE, alg_name,
};
pub use public::{
    EccPublic, MAX_TPMT_PUBLIC_LEN, PublicKey, attributes, parse_ecc_public, parse_public_ecc_p256,
};
pub use signature::{MAX_SIGNATURE_LEN, Signature, parse_signature};
pub use verify::{Certification, Quote, QuoteError, verify_certify, verify_quote};
