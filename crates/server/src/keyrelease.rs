//! Attested key release (docs/API.md): the server holds a VM chain's secret, sealed under its
//! secrets key, and releases it to a host only after a fresh quote of that host satisfies its
//! group's host policy, wrapped so that only that host's TPM can unwrap it
//! (`TPM2_MakeCredential` to its EK for its attestation key).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
use vmattest_api::host::{KeyRelease, ReleasedKey, VmKey, VmKeyInfo, release_aad};
use vmattest_api::{ErrorCode, Role};
use zeroize::Zeroizing;

use crate::auth::Caller;
use crate::error::{ApiError, ServerError};
use crate::hostattest::{Appraised, appraise_host, host_tpm, stored};
use crate::routes::{json_body, name_ok};
use crate::state::{AppState, now_secs};

use Role::{Admin, Agent};

const MIN_KEY: usize = 16;
const MAX_KEY: usize = 64;
const MAX_RELEASE_TO: usize = 64;

/// What a held key is sealed to: no VM name holds a ':', so it is not a webhook secret's.
fn sealed_for(vm: &str) -> String {
    format!("vm-key:{vm}")
}

async fn vm_host(s: &AppState, vm: &str) -> Result<String, ApiError> {
    Ok(s.db
        .vm(vm)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownVm, format!("no VM named {vm:?}")))?
        .host)
}

fn info(vm: String, release_to: &str, updated: i64) -> Result<VmKeyInfo, ApiError> {
    let release_to: Vec<String> = stored(&format!("key of VM {vm}: release_to"), release_to)?;
    Ok(VmKeyInfo {
        vm,
        release_to,
        updated: vmattest_api::time::from_secs(updated),
    })
}

/// `PUT /v1/vms/{vm}/key`: holds a VM chain's secret for release.
pub async fn put_key(
    State(s): State<AppState>,
    caller: Caller,
    Path(vm): Path<String>,
    body: Bytes,
) -> Result<Json<VmKeyInfo>, ApiError> {
    caller.require(&[Admin, Agent])?;
    let host = vm_host(&s, &vm).await?;
    caller.require_host(&host, &vm)?;
    let req: VmKey = json_body(&body)?;
    let secret =
        Zeroizing::new(hex::decode(&req.secret).map_err(|_| {
            ApiError::new(ErrorCode::Invalid, format!("key of VM {vm}: expected hex"))
        })?);
    if !(MIN_KEY..=MAX_KEY).contains(&secret.len()) {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "key of VM {vm}: {} bytes, expected {MIN_KEY} to {MAX_KEY}",
                secret.len()
            ),
        ));
    }
    if req.release_to.len() > MAX_RELEASE_TO {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "release_to: {} hosts, expected at most {MAX_RELEASE_TO}",
                req.release_to.len()
            ),
        ));
    }
    for h in &req.release_to {
        name_ok("host", h)?;
        host_tpm(&s, h).await?;
    }
    let sealed = s
        .secrets
        .seal(&sealed_for(&vm), &secret)
        .map_err(|e| ApiError::from(ServerError::Corrupt(format!("sealing the key: {e}"))))?;
    let release_to = serde_json::to_string(&req.release_to).unwrap_or_else(|_| "[]".into());
    let now = now_secs();
    s.db.put_vm_key(&vm, &sealed, &release_to, now).await?;
    tracing::info!(vm = %vm, release_to = ?req.release_to, "VM key held for release");
    info(vm, &release_to, now).map(Json)
}

/// `POST /v1/vms/{vm}/key/release`: the caller's host gets the key, wrapped for its TPM, when
/// its quote in the request satisfies its host policy.
pub async fn release(
    State(s): State<AppState>,
    caller: Caller,
    Path(vm): Path<String>,
    body: Bytes,
) -> Result<Json<ReleasedKey>, ApiError> {
    caller.require(&[Agent])?;
    let Some(host) = caller.host.clone() else {
        return Err(ApiError::forbidden("agent token without a host"));
    };
    let own = vm_host(&s, &vm).await?;
    let req: KeyRelease = json_body(&body)?;
    let no_key = || {
        ApiError::new(
            ErrorCode::NoKey,
            format!("no key of VM {vm} is held for host {host}"),
        )
    };
    let (sealed, release_to, updated) = s.db.vm_key(&vm).await?.ok_or_else(no_key)?;
    let allowed = info(vm.clone(), &release_to, updated)?.release_to;
    if host != own && !allowed.contains(&host) {
        return Err(no_key());
    }
    let Appraised {
        attestation,
        ak_name,
        ek,
    } = appraise_host(&s, &host, &req.evidence).await?;
    if attestation.status != "affirming" {
        return Err(ApiError::new(
            ErrorCode::HostUntrusted,
            format!(
                "host {host} is {}: {}; the key of VM {vm} is not released",
                attestation.status,
                attestation.mismatches.join("; ")
            ),
        ));
    }
    let ek = ek.ok_or_else(|| {
        ApiError::new(
            ErrorCode::TpmBinding,
            format!("host {host} has no endorsement key on record: register it again"),
        )
    })?;
    let secret = s
        .secrets
        .open(&sealed_for(&vm), &sealed)
        .map_err(|e| ApiError::from(ServerError::Corrupt(format!("key of VM {vm}: {e}"))))?;
    let mut kek = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    getrandom::fill(kek.as_mut_slice())
        .and_then(|()| getrandom::fill(&mut nonce))
        .map_err(|e| ApiError::from(ServerError::Corrupt(format!("randomness: {e}"))))?;
    let made = vmattest_quote::make_credential(&ek, &ak_name, kek.as_slice())
        .map_err(|e| ApiError::new(ErrorCode::TpmBinding, format!("host {host}: {e}")))?;
    let aad = release_aad(&vm, &host);
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(kek.as_slice()))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &secret,
                aad: &aad,
            },
        )
        .map_err(|_| ApiError::from(ServerError::Corrupt("key release encryption".into())))?;
    s.db.record_key_release(&vm, &host, now_secs(), attestation.id)
        .await?;
    tracing::info!(vm = %vm, host = %host, result = attestation.id, "VM key released");
    Ok(Json(ReleasedKey {
        vm,
        host,
        id_object: hex::encode(&made.id_object),
        encrypted_secret: hex::encode(&made.encrypted_secret),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ciphertext),
        attestation,
    }))
}
