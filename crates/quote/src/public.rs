//! Public keys: `TPMT_PUBLIC` for ECC NIST P-256, SubjectPublicKeyInfo PEM, SEC1 points.

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use crate::marshal::{
    MAX_DIGEST, P256_BYTES, P384_BYTES, ParseError, Reader, TPM_ALG_AES, TPM_ALG_ECC,
    TPM_ALG_ECDSA, TPM_ALG_NULL, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ECC_NIST_P256,
    TPM_ECC_NIST_P384, alg_display,
};

/// `TPMA_OBJECT` bits.
pub mod attributes {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const ST_CLEAR: u32 = 1 << 2;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const NO_DA: u32 = 1 << 10;
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN_ENCRYPT: u32 = 1 << 18;
}

/// Largest ECC `TPMT_PUBLIC` accepted: every field at its maximum for a P-256 key.
pub const MAX_TPMT_PUBLIC_LEN: usize =
    2 + 2 + 4 + (2 + MAX_DIGEST) + 6 + 4 + 2 + 4 + 2 * (2 + P384_BYTES);

/// Largest PEM text accepted by [`PublicKey::from_spki_pem`].
pub const MAX_PEM_LEN: usize = 4096;

const STRUCTURE: &str = "TPMT_PUBLIC";

/// What the TPM says about a key, known only when it came from a `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TpmInfo {
    object_attributes: u32,
    auth_policy: Vec<u8>,
    name: Vec<u8>,
}

/// An ECDSA NIST P-256 public key, optionally with its TPM description and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    tpm: Option<TpmInfo>,
}

impl PublicKey {
    /// From a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as written by `tpm2_readpublic -f pem`.
    /// Such a key has no TPM name.
    pub fn from_spki_pem(pem: &str) -> Result<PublicKey, ParseError> {
        if pem.len() > MAX_PEM_LEN {
            return Err(ParseError::Oversize {
                structure: "SubjectPublicKeyInfo PEM",
                max: MAX_PEM_LEN,
                found: pem.len(),
            });
        }
        let key =
            VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| ParseError::BadValue {
                structure: "SubjectPublicKeyInfo PEM",
                field: "key",
                offset: 0,
                expected: "a PEM PUBLIC KEY holding a valid NIST P-256 point",
                found: format!("an unusable key ({e})"),
            })?;
        Ok(PublicKey { key, tpm: None })
    }

    /// From a SEC1 point (65-byte uncompressed or 33-byte compressed). No TPM name.
    pub fn from_sec1(bytes: &[u8]) -> Result<PublicKey, ParseError> {
        let r = Reader::new(bytes, "SEC1 point", 65)?;
        let key = VerifyingKey::from_sec1_bytes(bytes).map_err(|_| {
            r.bad(
                "point",
                0,
                "a valid NIST P-256 point",
                format!("{} bytes that are not one", bytes.len()),
            )
        })?;
        Ok(PublicKey { key, tpm: None })
    }

    /// From a `TPM2B_PUBLIC` (u16 size, then the `TPMT_PUBLIC`), as written by
    /// `tpm2_create -u` or `tpm2_readpublic -o` without `-f`.
    pub fn from_tpm2b_public(bytes: &[u8]) -> Result<PublicKey, ParseError> {
        let mut r = Reader::new(bytes, "TPM2B_PUBLIC", 2 + MAX_TPMT_PUBLIC_LEN)?;
        let inner = r.tpm2b("publicArea", MAX_TPMT_PUBLIC_LEN)?;
        r.finish()?;
        parse_public_ecc_p256(inner)
    }

    /// The TPM name, `nameAlg || SHA-256(TPMT_PUBLIC)`; `None` for keys not given as a
    /// `TPMT_PUBLIC`.
    pub fn name(&self) -> Option<&[u8]> {
        self.tpm.as_ref().map(|t| t.name.as_slice())
    }

    /// `objectAttributes` (see [`attributes`]); `None` for keys not given as a `TPMT_PUBLIC`.
    pub fn object_attributes(&self) -> Option<u32> {
        self.tpm.as_ref().map(|t| t.object_attributes)
    }

    /// `authPolicy`; `None` for keys not given as a `TPMT_PUBLIC`.
    pub fn auth_policy(&self) -> Option<&[u8]> {
        self.tpm.as_ref().map(|t| t.auth_policy.as_slice())
    }

    /// Whether the TPM says this is a restricted signing key that never leaves it
    /// (`fixedTPM | restricted | sign`), as an attestation key should be.
    pub fn is_restricted_signing_key(&self) -> bool {
        let want = attributes::FIXED_TPM | attributes::RESTRICTED | attributes::SIGN_ENCRYPT;
        self.object_attributes()
            .is_some_and(|a| a & want == want && a & attributes::DECRYPT == 0)
    }

    /// The uncompressed SEC1 point `04 || x || y`.
    pub fn to_sec1_uncompressed(&self) -> [u8; 65] {
        let point = self.key.to_encoded_point(false);
        let mut out = [0u8; 65];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// The RustCrypto verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

/// An ECC key's `TPMT_PUBLIC`, parsed: NIST P-256 with ECDSA-SHA256 or NIST P-384 with
/// ECDSA-SHA384 (or no scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPublic {
    /// `TPM_ECC_NIST_P256` or `TPM_ECC_NIST_P384`.
    pub curve: u16,
    /// Uncompressed SEC1 point `04 || x || y`; not yet checked to lie on the curve.
    pub sec1: Vec<u8>,
    pub object_attributes: u32,
    pub auth_policy: Vec<u8>,
    /// `nameAlg || SHA-256(TPMT_PUBLIC)`.
    pub name: Vec<u8>,
}

/// Parses a `TPMT_PUBLIC` for an ECC NIST P-256 key (as written by
/// `tpm2_readpublic -f tpmt`), checks the point is on the curve and computes its name.
pub fn parse_public_ecc_p256(bytes: &[u8]) -> Result<PublicKey, ParseError> {
    let e = parse_ecc_public(bytes)?;
    if e.curve != TPM_ECC_NIST_P256 {
        return Err(ParseError::BadValue {
            structure: STRUCTURE,
            field: "parameters.curveID",
            offset: 0,
            expected: "TPM_ECC_NIST_P256 (0x0003)",
            found: format!("{:#06x}", e.curve),
        });
    }
    let key = VerifyingKey::from_sec1_bytes(&e.sec1).map_err(|_| ParseError::BadValue {
        structure: STRUCTURE,
        field: "unique",
        offset: 0,
        expected: "a point on NIST P-256",
        found: hex::encode(&e.sec1),
    })?;
    Ok(PublicKey {
        key,
        tpm: Some(TpmInfo {
            object_attributes: e.object_attributes,
            auth_policy: e.auth_policy,
            name: e.name,
        }),
    })
}

/// Parses an ECC key's `TPMT_PUBLIC` (P-256 or P-384) and computes its name.
pub fn parse_ecc_public(bytes: &[u8]) -> Result<EccPublic, ParseError> {
    let mut r = Reader::new(bytes, STRUCTURE, MAX_TPMT_PUBLIC_LEN)?;
    r.expect_alg("type", TPM_ALG_ECC, "TPM_ALG_ECC (0x0023)")?;
    r.expect_alg("nameAlg", TPM_ALG_SHA256, "TPM_ALG_SHA256 (0x000b)")?;
    let object_attributes = r.u32("objectAttributes")?;
    let offset = r.pos();
    let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
    if !(auth_policy.is_empty() || auth_policy.len() == 32) {
        return Err(r.bad(
            "authPolicy size",
            offset,
            "0 or 32 (a SHA-256 policy digest)",
            auth_policy.len().to_string(),
        ));
    }
    // TPMT_SYM_DEF_OBJECT
    let offset = r.pos();
    match r.u16("parameters.symmetric.algorithm")? {
        TPM_ALG_NULL => {}
        TPM_ALG_AES => {
            let offset = r.pos();
            let bits = r.u16("parameters.symmetric.keyBits")?;
            if !matches!(bits, 128 | 192 | 256) {
                return Err(r.bad(
                    "parameters.symmetric.keyBits",
                    offset,
                    "128, 192 or 256",
                    bits.to_string(),
                ));
            }
            let offset = r.pos();
            let mode = r.u16("parameters.symmetric.mode")?;
            if !(0x0040..=0x0044).contains(&mode) {
                return Err(r.bad(
                    "parameters.symmetric.mode",
                    offset,
                    "a block cipher mode (TPM_ALG_CTR..TPM_ALG_ECB)",
                    alg_display(mode),
                ));
            }
        }
        other => {
            return Err(r.bad(
                "parameters.symmetric.algorithm",
                offset,
                "TPM_ALG_NULL (0x0010) or TPM_ALG_AES (0x0006)",
                alg_display(other),
            ));
        }
    }
    // TPMT_ECC_SCHEME
    let mut scheme_hash = None;
    let offset = r.pos();
    match r.u16("parameters.scheme.scheme")? {
        TPM_ALG_NULL => {}
        TPM_ALG_ECDSA => {
            let offset = r.pos();
            let hash = r.u16("parameters.scheme.hashAlg")?;
            if !matches!(hash, TPM_ALG_SHA256 | TPM_ALG_SHA384) {
                return Err(r.bad(
                    "parameters.scheme.hashAlg",
                    offset,
                    "TPM_ALG_SHA256 (0x000b) or TPM_ALG_SHA384 (0x000c)",
                    alg_display(hash),
                ));
            }
            scheme_hash = Some(hash);
        }
        other => {
            return Err(r.bad(
                "parameters.scheme.scheme",
                offset,
                "TPM_ALG_ECDSA (0x0018) or TPM_ALG_NULL (0x0010)",
                alg_display(other),
            ));
        }
    }
    let offset = r.pos();
    let curve = r.u16("parameters.curveID")?;
    let (coord, hash) = match curve {
        TPM_ECC_NIST_P256 => (P256_BYTES, TPM_ALG_SHA256),
        TPM_ECC_NIST_P384 => (P384_BYTES, TPM_ALG_SHA384),
        _ => {
            return Err(r.bad(
                "parameters.curveID",
                offset,
                "TPM_ECC_NIST_P256 (0x0003) or TPM_ECC_NIST_P384 (0x0004)",
                format!("{curve:#06x}"),
            ));
        }
    };
    if scheme_hash.is_some_and(|h| h != hash) {
        return Err(r.bad(
            "parameters.curveID",
            offset,
            "the scheme's curve (P-256 with SHA-256, P-384 with SHA-384)",
            format!(
                "{curve:#06x} with {}",
                alg_display(scheme_hash.unwrap_or(0))
            ),
        ));
    }
    r.expect_alg(
        "parameters.kdf.scheme",
        TPM_ALG_NULL,
        "TPM_ALG_NULL (0x0010)",
    )?;
    let x = r.tpm2b("unique.x", coord)?;
    let y = r.tpm2b("unique.y", coord)?;
    let mut sec1 = vec![0u8; 1 + 2 * coord];
    sec1[0] = 0x04;
    sec1[1 + coord - x.len()..1 + coord].copy_from_slice(x);
    sec1[1 + 2 * coord - y.len()..].copy_from_slice(y);
    r.finish()?;
    let mut name = Vec::with_capacity(34);
    name.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    name.extend_from_slice(&Sha256::digest(bytes));
    Ok(EccPublic {
        curve,
        sec1,
        object_attributes,
        auth_policy,
        name,
    })
}
