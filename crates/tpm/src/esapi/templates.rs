//! The fixed key templates. The `unique` field of each primary template is a constant, so
//! `TPM2_CreatePrimary` derives the same key from the owner seed every time.

use sha2::{Digest as _, Sha256};
use tss_esapi::Error;
use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme,
    KeyedHashScheme, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SymmetricDefinitionObject,
};

/// Domain-separated constant for a template's `unique.x`.
fn unique(label: &str) -> Result<EccPoint, Error> {
    let x = Sha256::digest(format!("vmattest-tpm v1 {label}").as_bytes());
    Ok(EccPoint::new(
        EccParameter::try_from(x.to_vec())?,
        EccParameter::default(),
    ))
}

fn key_attributes() -> ObjectAttributesBuilder {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
}

fn ecc_public(
    attributes: ObjectAttributes,
    params: PublicEccParametersBuilder,
    label: &str,
) -> Result<Public, Error> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params.build()?)
        .with_ecc_unique_identifier(unique(label)?)
        .build()
}

fn ecdsa(hash: HashingAlgorithm) -> EccScheme {
    EccScheme::EcDsa(HashScheme::new(hash))
}

/// Restricted ECC P-256 decryption key (AES-128-CFB): the parent of sealed objects.
pub(crate) fn storage_primary() -> Result<Public, Error> {
    ecc_public(
        key_attributes()
            .with_restricted(true)
            .with_decrypt(true)
            .with_no_da(true)
            .build()?,
        PublicEccParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            EccCurve::NistP256,
        ),
        "storage",
    )
}

/// Unrestricted ECDSA P-384 / SHA-384 signing key (nameAlg SHA-256):
/// fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | sign.
pub(crate) fn signing_key() -> Result<Public, Error> {
    ecc_public(
        key_attributes().with_sign_encrypt(true).build()?,
        PublicEccParametersBuilder::new_unrestricted_signing_key(
            ecdsa(HashingAlgorithm::Sha384),
            EccCurve::NistP384,
        ),
        "signing key",
    )
}

/// Restricted ECDSA P-256 / SHA-256 attestation key:
/// restricted | sign | fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth.
pub(crate) fn attestation_key() -> Result<Public, Error> {
    ecc_public(
        key_attributes()
            .with_sign_encrypt(true)
            .with_restricted(true)
            .build()?,
        PublicEccParametersBuilder::new()
            .with_ecc_scheme(ecdsa(HashingAlgorithm::Sha256))
            .with_curve(EccCurve::NistP256)
            .with_is_signing_key(true)
            .with_is_decryption_key(false)
            .with_restricted(true)
            .with_symmetric(SymmetricDefinitionObject::Null)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null),
        "attestation key",
    )
}

/// A sealed data object usable only through `policy` (no userWithAuth).
pub(crate) fn sealed_object(policy: Digest) -> Result<Public, Error> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(
            ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_no_da(true)
                .build()?,
        )
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}
