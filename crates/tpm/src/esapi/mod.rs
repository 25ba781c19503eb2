//! The backend built with the `tpm` feature: TPM commands through tss-esapi (libtss2 ESAPI).
//!
//! Every method flushes each transient object and session it creates before returning, also
//! when a command fails, so a TPM without a resource manager never runs out of slots.

mod templates;

use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use tss_esapi::Context;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::abstraction::ek::create_ek_object_2;
use tss_esapi::constants::SessionType;
use tss_esapi::constants::capabilities::CapabilityType;
use tss_esapi::constants::property_tag::PropertyTag;
use tss_esapi::constants::tss::{TPM2_PT_MANUFACTURER, TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PcrHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    AttestInfo, CapabilityData, Data, Digest, DigestValues, EncryptedSecret, HashcheckTicket,
    IdObject, Nonce, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public,
    SensitiveData, Signature, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::{DeviceConfig, TctiNameConf};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use zeroize::Zeroizing;

use crate::{
    Certification, EcdsaP384Signature, EcdsaSignature, KeyPublic, PERSISTENT_KEY_HANDLE, Quote,
    SealedBlob, TpmConfig, TpmError, TpmInfo, TpmTarget,
};

/// TPM2_PCR_Read answers at most 8 digests per call.
const PCR_READ_CHUNK: usize = 8;
/// How often a quote is retried when a PCR changed between the quote and the read-back.
const QUOTE_ATTEMPTS: usize = 3;

/// An open ESAPI context.
pub(crate) struct Backend {
    ctx: Context,
}

fn cmd(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |e| TpmError::Command {
        op,
        detail: e.to_string(),
    }
}

fn unexpected(op: &'static str, detail: impl Into<String>) -> TpmError {
    TpmError::Unexpected {
        op,
        detail: detail.into(),
    }
}

/// Runs `f`, then flushes `handle` whatever `f` returned. The first error wins.
fn flushing<T>(
    ctx: &mut Context,
    handle: ObjectHandle,
    f: impl FnOnce(&mut Context) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let result = f(ctx);
    let flushed = ctx.flush_context(handle).map_err(cmd("FlushContext"));
    let value = result?;
    flushed?;
    Ok(value)
}

fn session_object(session: AuthSession) -> ObjectHandle {
    ObjectHandle::from(SessionHandle::from(session))
}

/// `TPM2_CreatePrimary` under the owner hierarchy (empty owner auth).
fn create_primary(ctx: &mut Context, template: Public) -> Result<(KeyHandle, Public), TpmError> {
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map_err(cmd("CreatePrimary"))?;
    Ok((created.key_handle, created.out_public))
}

/// Creates the primary from `template`, runs `f` with it, and flushes it.
fn with_primary<T>(
    ctx: &mut Context,
    template: Result<Public, tss_esapi::Error>,
    f: impl FnOnce(&mut Context, KeyHandle, &Public) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let template = template.map_err(cmd("building a key template"))?;
    let (handle, public) = create_primary(ctx, template)?;
    flushing(ctx, handle.into(), |c| f(c, handle, &public))
}

/// Left-pads a big-endian ECC parameter to `N` bytes.
fn be_padded<const N: usize>(
    op: &'static str,
    what: &str,
    bytes: &[u8],
) -> Result<[u8; N], TpmError> {
    let mut out = [0u8; N];
    let Some(start) = N.checked_sub(bytes.len()) else {
        return Err(unexpected(
            op,
            format!("{what} is {} bytes, expected at most {N}", bytes.len()),
        ));
    };
    out[start..].copy_from_slice(bytes);
    Ok(out)
}

/// The size in bytes of a coordinate (and of a signature's r and s) on `curve`.
fn coordinate_len(op: &'static str, curve: EccCurve) -> Result<usize, TpmError> {
    match curve {
        EccCurve::NistP256 => Ok(32),
        EccCurve::NistP384 => Ok(48),
        other => Err(unexpected(
            op,
            format!("the key is on {other:?}, expected NIST P-256 or P-384"),
        )),
    }
}

/// Left-pads a big-endian coordinate to `len` bytes.
fn pad_coordinate(
    op: &'static str,
    what: &str,
    bytes: &[u8],
    len: usize,
) -> Result<Vec<u8>, TpmError> {
    let Some(start) = len.checked_sub(bytes.len()) else {
        return Err(unexpected(
            op,
            format!("{what} is {} bytes, expected at most {len}", bytes.len()),
        ));
    };
    let mut out = vec![0u8; len];
    out[start..].copy_from_slice(bytes);
    Ok(out)
}

/// The uncompressed SEC1 point `0x04 || X || Y` of an ECC key: 65 bytes on P-256, 97 on P-384.
fn sec1_of(op: &'static str, public: &Public) -> Result<Vec<u8>, TpmError> {
    let Public::Ecc {
        parameters, unique, ..
    } = public
    else {
        return Err(unexpected(op, "the key is not an ECC key"));
    };
    let len = coordinate_len(op, parameters.ecc_curve())?;
    let mut out = Vec::with_capacity(1 + 2 * len);
    out.push(0x04);
    out.extend_from_slice(&pad_coordinate(op, "X", unique.x().value(), len)?);
    out.extend_from_slice(&pad_coordinate(op, "Y", unique.y().value(), len)?);
    Ok(out)
}

fn key_public(op: &'static str, public: &Public) -> Result<KeyPublic, TpmError> {
    let sec1 = sec1_of(op, public)?;
    let tpmt = public.marshall().map_err(cmd("marshalling TPMT_PUBLIC"))?;
    Ok(KeyPublic::new(sec1, tpmt))
}

/// `r` and `s` of an ECDSA signature with hash `hash`, each left-padded to `N` bytes.
fn ecdsa_parts<const N: usize>(
    op: &'static str,
    signature: &Signature,
    hash: HashingAlgorithm,
) -> Result<([u8; N], [u8; N]), TpmError> {
    let Signature::EcDsa(sig) = signature else {
        return Err(unexpected(
            op,
            format!("signature is {:?}, expected ECDSA", signature.algorithm()),
        ));
    };
    if sig.hashing_algorithm() != hash {
        return Err(unexpected(
            op,
            format!(
                "signature hash is {:?}, expected {hash:?}",
                sig.hashing_algorithm()
            ),
        ));
    }
    Ok((
        be_padded(op, "r", sig.signature_r().value())?,
        be_padded(op, "s", sig.signature_s().value())?,
    ))
}

/// An ECDSA-SHA256 signature by the P-256 attestation key.
fn ecdsa_of(op: &'static str, signature: &Signature) -> Result<EcdsaSignature, TpmError> {
    let (r, s) = ecdsa_parts(op, signature, HashingAlgorithm::Sha256)?;
    Ok(EcdsaSignature { r, s })
}

/// An ECDSA-SHA384 signature by the P-384 signing key.
fn ecdsa_p384_of(op: &'static str, signature: &Signature) -> Result<EcdsaP384Signature, TpmError> {
    let (r, s) = ecdsa_parts(op, signature, HashingAlgorithm::Sha384)?;
    Ok(EcdsaP384Signature { r, s })
}

fn sha256_selection(pcrs: &[u32]) -> Result<PcrSelectionList, TpmError> {
    let slots = pcrs
        .iter()
        .map(|&p| {
            1u32.checked_shl(p)
                .ok_or_else(|| unexpected("PCR selection", format!("PCR {p}")))
                .and_then(|bit| PcrSlot::try_from(bit).map_err(cmd("PCR selection")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(cmd("PCR selection"))
}

fn pcr_handle(index: u32) -> Result<PcrHandle, TpmError> {
    // ESYS_TR_PCR0 to ESYS_TR_PCR31 are 0 to 31.
    PcrHandle::try_from(index).map_err(cmd("PCR handle"))
}

fn null_ticket() -> Result<HashcheckTicket, TpmError> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(cmd("building a null hashcheck ticket"))
}

fn data(what: &'static str, bytes: &[u8]) -> Result<Data, TpmError> {
    Data::try_from(bytes.to_vec()).map_err(|e| TpmError::Input {
        what,
        detail: e.to_string(),
    })
}

fn read_pcrs(ctx: &mut Context, pcrs: &[u32]) -> Result<Vec<[u8; 32]>, TpmError> {
    const OP: &str = "PCR_Read";
    let mut out = Vec::with_capacity(pcrs.len());
    for chunk in pcrs.chunks(PCR_READ_CHUNK) {
        let (_, _, digests) =
            ctx.execute_without_session(|c| c.pcr_read(sha256_selection(chunk)?).map_err(cmd(OP)))?;
        if digests.len() != chunk.len() {
            return Err(unexpected(
                OP,
                format!(
                    "{} SHA-256 values for PCRs {chunk:?} (is the bank allocated?)",
                    digests.len()
                ),
            ));
        }
        for d in digests.value() {
            out.push(be32_exact(OP, d.value())?);
        }
    }
    Ok(out)
}

fn be32_exact(op: &'static str, bytes: &[u8]) -> Result<[u8; 32], TpmError> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| unexpected(op, format!("digest of {} bytes, expected 32", bytes.len())))
}

fn pcr_digest(values: &[[u8; 32]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v);
    }
    hasher.finalize().into()
}

fn start_session(ctx: &mut Context, kind: SessionType) -> Result<AuthSession, TpmError> {
    ctx.start_auth_session(
        None,
        None,
        None,
        kind,
        SymmetricDefinition::AES_128_CFB,
        HashingAlgorithm::Sha256,
    )
    .map_err(cmd("StartAuthSession"))?
    .ok_or_else(|| unexpected("StartAuthSession", "no session handle"))
}

fn policy_pcr(
    ctx: &mut Context,
    session: AuthSession,
    digest: Digest,
    selection: PcrSelectionList,
) -> Result<(), TpmError> {
    let policy = PolicySession::try_from(session).map_err(cmd("PolicyPCR"))?;
    ctx.policy_pcr(policy, digest, selection)
        .map_err(cmd("PolicyPCR"))
}

fn hash_name(alg: HashingAlgorithm) -> String {
    match alg {
        HashingAlgorithm::Sha1 => "sha1".to_owned(),
        HashingAlgorithm::Sha256 => "sha256".to_owned(),
        HashingAlgorithm::Sha384 => "sha384".to_owned(),
        HashingAlgorithm::Sha512 => "sha512".to_owned(),
        HashingAlgorithm::Sm3_256 => "sm3_256".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl Backend {
    pub(crate) fn open(config: &TpmConfig) -> Result<Self, TpmError> {
        let open_err = |detail: String| TpmError::Open {
            target: config.target.to_string(),
            detail,
        };
        let tcti = match &config.target {
            TpmTarget::Device(path) => {
                let path = path
                    .to_str()
                    .ok_or_else(|| open_err("device path is not UTF-8".to_owned()))?;
                TctiNameConf::Device(
                    DeviceConfig::from_str(path).map_err(|e| open_err(e.to_string()))?,
                )
            }
            TpmTarget::Tcti(s) => TctiNameConf::from_str(s).map_err(|e| open_err(e.to_string()))?,
        };
        let ctx = Context::new(tcti).map_err(|e| {
            open_err(format!(
                "{e} (is the TPM there and reachable? check {} or {})",
                "/dev/tpmrm0",
                crate::TCTI_ENV
            ))
        })?;
        Ok(Backend { ctx })
    }

    pub(crate) fn info(&mut self) -> Result<TpmInfo, TpmError> {
        const OP: &str = "GetCapability";
        let ctx = &mut self.ctx;
        // TPM2_PT_MANUFACTURER (0x105) to TPM2_PT_FIRMWARE_VERSION_2 (0x10c).
        let (props, _) = ctx
            .get_capability(CapabilityType::TpmProperties, TPM2_PT_MANUFACTURER, 8)
            .map_err(cmd(OP))?;
        let CapabilityData::TpmProperties(props) = props else {
            return Err(unexpected(OP, "no TPM properties"));
        };
        let prop = |tag: PropertyTag| props.find(tag).map(|p| p.value());
        let manufacturer_id = prop(PropertyTag::Manufacturer)
            .ok_or_else(|| unexpected(OP, "no TPM2_PT_MANUFACTURER"))?;
        let fw1 = prop(PropertyTag::FirmwareVersion1).unwrap_or(0);
        let fw2 = prop(PropertyTag::FirmwareVersion2).unwrap_or(0);
        let manufacturer = manufacturer_id
            .to_be_bytes()
            .iter()
            .filter(|b| b.is_ascii_graphic())
            .map(|&b| char::from(b))
            .collect();

        let (pcrs, _) = ctx
            .get_capability(CapabilityType::AssignedPcr, 0, 1)
            .map_err(cmd(OP))?;
        let CapabilityData::AssignedPcr(pcrs) = pcrs else {
            return Err(unexpected(OP, "no PCR allocation"));
        };
        let pcr_banks = pcrs
            .get_selections()
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| hash_name(s.hashing_algorithm()))
            .collect();

        let (handles, _) = ctx
            .get_capability(CapabilityType::Handles, PERSISTENT_KEY_HANDLE, 1)
            .map_err(cmd(OP))?;
        let CapabilityData::Handles(handles) = handles else {
            return Err(unexpected(OP, "no handle list"));
        };
        let persistent_key_present = handles
            .iter()
            .any(|&h| u32::from(h) == PERSISTENT_KEY_HANDLE);

        Ok(TpmInfo {
            manufacturer,
            manufacturer_id,
            firmware_version: (u64::from(fw1) << 32) | u64::from(fw2),
            pcr_banks,
            persistent_key_present,
        })
    }

    pub(crate) fn signing_key(&mut self) -> Result<KeyPublic, TpmError> {
        with_primary(&mut self.ctx, templates::signing_key(), |_, _, public| {
            key_public("CreatePrimary (signing key)", public)
        })
    }

    pub(crate) fn attestation_key(&mut self) -> Result<KeyPublic, TpmError> {
        with_primary(
            &mut self.ctx,
            templates::attestation_key(),
            |_, _, public| key_public("CreatePrimary (attestation key)", public),
        )
    }

    /// Also returns the SEC1 point of the key that signed, as the TPM reported it when
    /// re-creating the key for this signature.
    pub(crate) fn sign_digest(
        &mut self,
        digest: &[u8; 48],
    ) -> Result<(EcdsaP384Signature, Vec<u8>), TpmError> {
        const OP: &str = "Sign";
        let digest = Digest::try_from(digest.to_vec()).map_err(cmd(OP))?;
        let ticket = null_ticket()?;
        with_primary(
            &mut self.ctx,
            templates::signing_key(),
            |ctx, key, public| {
                let sec1 = sec1_of("CreatePrimary (signing key)", public)?;
                let sig = ctx
                    .execute_with_session(Some(AuthSession::Password), |c| {
                        c.sign(key, digest, SignatureScheme::Null, ticket)
                    })
                    .map_err(cmd(OP))?;
                Ok((ecdsa_p384_of(OP, &sig)?, sec1))
            },
        )
    }

    pub(crate) fn certify(&mut self, nonce: &[u8]) -> Result<Certification, TpmError> {
        const OP: &str = "Certify";
        let nonce = data("nonce", nonce)?;
        with_primary(&mut self.ctx, templates::signing_key(), |ctx, key, _| {
            with_primary(ctx, templates::attestation_key(), |ctx, ak, _| {
                let (attest, sig) = ctx
                    .execute_with_sessions(
                        (
                            Some(AuthSession::Password),
                            Some(AuthSession::Password),
                            None,
                        ),
                        |c| c.certify(key.into(), ak, nonce, SignatureScheme::Null),
                    )
                    .map_err(cmd(OP))?;
                if !matches!(attest.attested(), AttestInfo::Certify { .. }) {
                    return Err(unexpected(OP, "attest is not a certification"));
                }
                Ok(Certification {
                    attest: attest.marshall().map_err(cmd("marshalling TPMS_ATTEST"))?,
                    signature: ecdsa_of(OP, &sig)?,
                })
            })
        })
    }

    pub(crate) fn ek_public(&mut self) -> Result<[u8; 65], TpmError> {
        const OP: &str = "CreatePrimary (endorsement key)";
        let ctx = &mut self.ctx;
        let ek = create_ek_object_2(
            ctx,
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
            None,
        )
        .map_err(cmd(OP))?;
        let sec1 = flushing(ctx, ek.into(), |c| {
            let (public, _, _) = c
                .execute_without_session(|c| c.read_public(ek))
                .map_err(cmd("ReadPublic"))?;
            sec1_of(OP, &public)
        })?;
        let found = sec1.len();
        <[u8; 65]>::try_from(sec1).map_err(|_| {
            unexpected(
                OP,
                format!("EK point of {found} bytes, expected 65 (P-256)"),
            )
        })
    }

    /// The manufacturer's EK certificate (DER) from its standard NV index, if provisioned:
    /// ECC P-384, ECC P-256, then RSA 2048.
    pub(crate) fn ek_certificate(&mut self) -> Option<Vec<u8>> {
        use tss_esapi::interface_types::key_bits::RsaKeyBits;
        [
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        ]
        .into_iter()
        .find_map(|alg| tss_esapi::abstraction::ek::retrieve_ek_pubcert(&mut self.ctx, alg).ok())
        .filter(|c| !c.is_empty())
    }

    pub(crate) fn pcr_read(&mut self, pcrs: &[u32]) -> Result<Vec<[u8; 32]>, TpmError> {
        read_pcrs(&mut self.ctx, pcrs)
    }

    /// `TPM2_ActivateCredential` with the attestation key and the ECC P-256 EK (whose default
    /// policy is `PolicySecret(TPM_RH_ENDORSEMENT)`, with the empty endorsement auth).
    pub(crate) fn activate_credential(
        &mut self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        const OP: &str = "ActivateCredential";
        let blob = IdObject::try_from(id_object.to_vec()).map_err(|e| TpmError::Input {
            what: "credential blob",
            detail: e.to_string(),
        })?;
        let secret =
            EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(|e| TpmError::Input {
                what: "credential secret",
                detail: e.to_string(),
            })?;
        let ctx = &mut self.ctx;
        let ek = create_ek_object_2(
            ctx,
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
            None,
        )
        .map_err(cmd("CreatePrimary (endorsement key)"))?;
        let digest = flushing(ctx, ek.into(), |c| {
            with_primary(c, templates::attestation_key(), |c, ak, _| {
                let session = start_session(c, SessionType::Policy)?;
                flushing(c, session_object(session), |c| {
                    let policy = PolicySession::try_from(session).map_err(cmd("PolicySecret"))?;
                    c.execute_with_session(Some(AuthSession::Password), |c| {
                        c.policy_secret(
                            policy,
                            AuthHandle::Endorsement,
                            Nonce::default(),
                            Digest::default(),
                            Nonce::default(),
                            None,
                        )
                    })
                    .map_err(cmd("PolicySecret"))?;
                    c.execute_with_sessions(
                        (Some(AuthSession::Password), Some(session), None),
                        |c| c.activate_credential(ak, ek, blob, secret),
                    )
                    .map_err(cmd(OP))
                })
            })
        })?;
        Ok(Zeroizing::new(digest.value().to_vec()))
    }

    pub(crate) fn pcr_extend(&mut self, index: u32, digest: &[u8; 32]) -> Result<(), TpmError> {
        const OP: &str = "PCR_Extend";
        let handle = pcr_handle(index)?;
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.to_vec()).map_err(cmd(OP))?,
        );
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.pcr_extend(handle, values)
            })
            .map_err(cmd(OP))
    }

    pub(crate) fn pcr_reset(&mut self, index: u32) -> Result<(), TpmError> {
        let handle = pcr_handle(index)?;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| c.pcr_reset(handle))
            .map_err(cmd("PCR_Reset"))
    }

    pub(crate) fn quote(&mut self, pcrs: &[u32], qualifying: &[u8]) -> Result<Quote, TpmError> {
        const OP: &str = "Quote";
        let qualifying = data("qualifying data", qualifying)?;
        let selection = sha256_selection(pcrs)?;
        with_primary(&mut self.ctx, templates::attestation_key(), |ctx, ak, _| {
            for _ in 0..QUOTE_ATTEMPTS {
                let (attest, sig) = ctx
                    .execute_with_session(Some(AuthSession::Password), |c| {
                        c.quote(
                            ak,
                            qualifying.clone(),
                            SignatureScheme::Null,
                            selection.clone(),
                        )
                    })
                    .map_err(cmd(OP))?;
                let AttestInfo::Quote { info } = attest.attested() else {
                    return Err(unexpected(OP, "attest is not a quote"));
                };
                let quoted_digest = info.pcr_digest().value().to_vec();
                let pcr_values = read_pcrs(ctx, pcrs)?;
                if quoted_digest != pcr_digest(&pcr_values) {
                    // A PCR changed between the quote and the read-back: quote again.
                    continue;
                }
                return Ok(Quote {
                    attest: attest.marshall().map_err(cmd("marshalling TPMS_ATTEST"))?,
                    signature: ecdsa_of(OP, &sig)?,
                    pcrs: pcrs.to_vec(),
                    pcr_values,
                });
            }
            Err(unexpected(
                OP,
                format!("PCRs kept changing during {QUOTE_ATTEMPTS} attempts"),
            ))
        })
    }

    pub(crate) fn seal(&mut self, secret: &[u8], pcrs: &[u32]) -> Result<SealedBlob, TpmError> {
        const OP: &str = "Create (sealed object)";
        let ctx = &mut self.ctx;
        let selection = sha256_selection(pcrs)?;
        let pcr_values = read_pcrs(ctx, pcrs)?;
        // The trial policy is computed over the values just read, so the blob's record and its
        // policy always agree.
        let expected =
            Digest::try_from(pcr_digest(&pcr_values).to_vec()).map_err(cmd("PolicyPCR"))?;
        let trial = start_session(ctx, SessionType::Trial)?;
        let policy = flushing(ctx, session_object(trial), |c| {
            policy_pcr(c, trial, expected, selection)?;
            let policy = PolicySession::try_from(trial).map_err(cmd("PolicyGetDigest"))?;
            c.policy_get_digest(policy).map_err(cmd("PolicyGetDigest"))
        })?;
        let template = templates::sealed_object(policy);
        let sensitive = SensitiveData::try_from(secret.to_vec()).map_err(|e| TpmError::Input {
            what: "secret",
            detail: e.to_string(),
        })?;
        let created = with_primary(ctx, templates::storage_primary(), |c, parent, _| {
            let template = template.map_err(cmd(OP))?;
            c.execute_with_session(Some(AuthSession::Password), |c| {
                c.create(parent, template, None, Some(sensitive), None, None)
            })
            .map_err(cmd(OP))
        })?;
        let blob = SealedBlob {
            public: created
                .out_public
                .marshall()
                .map_err(cmd("marshalling TPMT_PUBLIC"))?,
            private: created.out_private.value().to_vec(),
            pcrs: pcrs.to_vec(),
            pcr_values,
        };
        blob.validate()?;
        Ok(blob)
    }

    pub(crate) fn unseal(&mut self, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        const OP: &str = "Unseal";
        blob.validate()?;
        let public = Public::unmarshall(&blob.public).map_err(|e| TpmError::Input {
            what: "sealed blob public part",
            detail: e.to_string(),
        })?;
        let private = Private::try_from(blob.private.clone()).map_err(|e| TpmError::Input {
            what: "sealed blob private part",
            detail: e.to_string(),
        })?;
        let selection = sha256_selection(&blob.pcrs)?;
        let ctx = &mut self.ctx;
        let object = with_primary(ctx, templates::storage_primary(), |c, parent, _| {
            c.execute_with_session(Some(AuthSession::Password), |c| {
                c.load(parent, private, public)
            })
            .map_err(cmd("Load (sealed object)"))
        })?;
        let unsealed = flushing(ctx, object.into(), |c| {
            let session = start_session(c, SessionType::Policy)?;
            flushing(c, session_object(session), |c| {
                policy_pcr(c, session, Digest::default(), selection)?;
                c.execute_with_session(Some(session), |c| c.unseal(object.into()))
                    .map_err(cmd(OP))
            })
        });
        match unsealed {
            Ok(data) => Ok(Zeroizing::new(data.value().to_vec())),
            Err(err) => {
                let now = read_pcrs(ctx, &blob.pcrs)?;
                let changed: Vec<u32> = blob
                    .pcrs
                    .iter()
                    .zip(blob.pcr_values.iter().zip(&now))
                    .filter(|(_, (then, now))| then != now)
                    .map(|(&pcr, _)| pcr)
                    .collect();
                if changed.is_empty() {
                    Err(err)
                } else {
                    Err(TpmError::PcrMismatch { pcrs: changed })
                }
            }
        }
    }
}
