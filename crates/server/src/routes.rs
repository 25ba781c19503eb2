//! HTTP handlers (docs/API.md). Each handler checks the caller's role first.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Deserialize;
use vmattest_api::{
    AlertAction, AttestationResult, BaselineInfo, Challenge, EarKey, Health, Host, NewBaseline,
    NewHost, NewPolicy, NewVm, PolicyInfo, Role, Vm, VmPolicy,
};
use vmattest_core::alg::{Digest, HashAlg};
use vmattest_core::attest::evidence::MAX_REPORT_SITES;
use vmattest_core::attest::patch::CALL_SITE_LEN;
use vmattest_core::attest::{GuestAddr, PatchSite, Policy, Region, SiteKind};
use vmattest_core::chain::is_valid_name;
use vmattest_sign::PublicKey;

use crate::auth::Caller;
use crate::db::VmRow;
use crate::error::ApiError;
use crate::state::{AppState, encode_pages, now_secs};
use vmattest_api::ErrorCode;
use vmattest_api::host::DEFAULT_GROUP;

pub(crate) const MAX_LIMIT: i64 = 1000;
const MIN_WEBHOOK_SECRET: usize = 16;

use Role::{Admin, Agent, Auditor};

/// Parses a JSON body after the role check, so that a refused caller learns nothing more.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("request body: {e}")))
}

/// A row id from a path segment.
pub(crate) fn parse_id(what: &str, text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::Invalid,
            format!("{what} id {text:?}: expected an integer"),
        )
    })
}

pub(crate) fn name_ok(what: &str, name: &str) -> Result<(), ApiError> {
    if is_valid_name(name, 64) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Invalid,
            format!("{what} {name:?}: expected 1-64 of [A-Za-z0-9._-], not starting with '.'"),
        ))
    }
}

pub async fn health(State(s): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: s.db.backend.name().into(),
    })
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

pub async fn metrics(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(&[Admin, Auditor])?;
    let active = s.db.active_alerts().await?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&active),
    ))
}

fn ear_key_json(key: &crate::EarSigner) -> EarKey {
    EarKey {
        alg: key.jose_alg().into(),
        kid: key.kid().into(),
        public_key_pem: key.public_pem(),
        jwk: key.jwk(),
    }
}

/// The current EAR key; `/.well-known/jwks.json` also lists the keys it replaced.
pub async fn ear_key(State(s): State<AppState>) -> Json<EarKey> {
    Json(ear_key_json(&s.ear.current()))
}

pub async fn jwks(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/jwk-set+json")],
        Json(s.ear.jwks()),
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct RotateQuery {
    /// Key type of the new key: ed25519 or p384 (default: the current key's).
    alg: Option<String>,
}

pub async fn rotate_ear_key(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<RotateQuery>,
) -> Result<Json<EarKey>, ApiError> {
    caller.require(&[Admin])?;
    let alg = match q.alg.as_deref() {
        None => None,
        Some(name) => Some(crate::ear::key_alg(name).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Invalid,
                format!("alg: expected ed25519 or p384, found {name:?}"),
            )
        })?),
    };
    let key = s.ear.rotate(alg).await?;
    Ok(Json(ear_key_json(&key)))
}

pub async fn new_host(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Host>, ApiError> {
    caller.require(&[Admin])?;
    let req: NewHost = json_body(&body)?;
    name_ok("host", &req.name)?;
    let key = PublicKey::from_pem(&req.public_key_pem).map_err(|e| {
        ApiError::new(
            ErrorCode::Invalid,
            format!("host {} public key: {e}", req.name),
        )
    })?;
    let (ak, ek) = match &req.tpm {
        Some(binding) => {
            let ak = crate::tpm::check_binding(&key, binding).map_err(|e| {
                ApiError::new(ErrorCode::TpmBinding, format!("host {}: {e}", req.name))
            })?;
            let ek = hex::decode(&binding.certify.ek)
                .ok()
                .filter(|ek| ek.len() == 65 && ek[0] == 4)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::TpmBinding,
                        format!(
                            "host {}: certify.ek: expected an uncompressed P-256 point (130 hex digits)",
                            req.name
                        ),
                    )
                })?;
            (Some(ak), Some(ek))
        }
        None => (None, None),
    };
    let tpm_backed = ak.is_some();
    let group = req.group.as_deref().unwrap_or(DEFAULT_GROUP);
    name_ok("group", group)?;
    let now = now_secs();
    let key_id = key.key_id().to_hex();
    let row = crate::db::NewHostRow {
        name: &req.name,
        pem: &key.to_pem(),
        key_id: &key_id,
        ak: ak.as_deref(),
        ek: ek.as_deref(),
        group,
    };
    if !s.db.insert_host(&row, now).await? {
        return Err(ApiError::new(
            ErrorCode::Exists,
            format!("host {} is already registered", req.name),
        ));
    }
    tracing::info!(host = %req.name, key_id = %key_id, tpm_backed, "host registered");
    Ok(Json(Host {
        name: req.name,
        key_id,
        tpm_backed,
        created: vmattest_api::time::from_secs(now),
    }))
}

pub async fn hosts(State(s): State<AppState>, caller: Caller) -> Result<Json<Vec<Host>>, ApiError> {
    caller.require(&[Admin, Auditor])?;
    let rows = s.db.hosts(None).await?;
    Ok(Json(
        rows.into_iter()
            .map(|h| Host {
                name: h.name,
                key_id: h.key_id,
                tpm_backed: h.tpm_backed,
                created: vmattest_api::time::from_secs(h.created),
            })
            .collect(),
    ))
}

pub async fn new_policy(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<PolicyInfo>, ApiError> {
    caller.require(&[Admin])?;
    let req: NewPolicy = json_body(&body)?;
    let policy = Policy::parse(&req.toml, None).map_err(|e| {
        ApiError::new(
            ErrorCode::Invalid,
            format!("{e} (symbols must be resolved before upload)"),
        )
    })?;
    let id = policy.id().to_hex();
    let toml = policy.to_toml();
    s.db.insert_policy(&id, &policy.name, &toml, now_secs())
        .await?;
    Ok(Json(PolicyInfo {
        id,
        name: policy.name,
        toml,
    }))
}

pub async fn policy(
    State(s): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PolicyInfo>, ApiError> {
    let (name, toml) =
        s.db.policy(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("policy", &id))?;
    Ok(Json(PolicyInfo { id, name, toml }))
}

/// At least one subset, each of them `policy`'s.
fn check_subsets(policy: &Policy, subsets: &[String]) -> Result<(), ApiError> {
    if subsets.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            "approved_subsets: expected at least one subset",
        ));
    }
    match subsets.iter().find(|sub| policy.subset(sub).is_none()) {
        Some(sub) => Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "approved_subsets: policy {} has no subset {sub:?}",
                policy.name
            ),
        )),
        None => Ok(()),
    }
}

/// `PUT /v1/vms/{vm}/policy`: moves a VM to another registered policy. Its baseline is then
/// the newest one taken for that policy (posted beforehand, or next); its results and alerts
/// stay.
pub async fn set_vm_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Vm>, ApiError> {
    caller.require(&[Admin])?;
    let req: VmPolicy = json_body(&body)?;
    let vm = s.vm(&name).await?;
    let policy = s.policy(&req.policy_id).await?;
    let subsets = req
        .approved_subsets
        .unwrap_or_else(|| vm.row.subsets.clone());
    check_subsets(&policy, &subsets)?;
    s.db.set_vm_policy(&name, &req.policy_id, &subsets).await?;
    s.forget_vm(&name).await;
    tracing::info!(vm = %name, from = %vm.row.policy_id, to = %req.policy_id, "VM moved to another policy");
    vm_view(&s, &name).await.map(Json)
}

pub async fn new_vm(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Vm>, ApiError> {
    caller.require(&[Admin])?;
    let req: NewVm = json_body(&body)?;
    name_ok("VM", &req.name)?;
    if s.db.hosts(Some(&req.host)).await?.is_empty() {
        return Err(ApiError::not_found("host", &req.host));
    }
    let policy = s.policy(&req.policy_id).await?;
    check_subsets(&policy, &req.approved_subsets)?;
    if req.threshold > 100 {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!("threshold: expected 0 to 100, found {}", req.threshold),
        ));
    }
    if let Some(w) = &req.webhook {
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!("webhook.url: expected http(s)://..., found {:?}", w.url),
            ));
        }
        if w.secret.len() < MIN_WEBHOOK_SECRET {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!(
                    "webhook.secret: expected at least {MIN_WEBHOOK_SECRET} bytes, found {}",
                    w.secret.len()
                ),
            ));
        }
    }
    let row = VmRow {
        name: req.name.clone(),
        host: req.host,
        policy_id: req.policy_id,
        subsets: req.approved_subsets,
        threshold: req.threshold,
        on_alert: match req.on_alert {
            AlertAction::Rollback => "rollback".into(),
            AlertAction::None => "none".into(),
        },
        webhook_url: req.webhook.as_ref().map(|w| w.url.clone()),
        // Sealed before it reaches the database (docs/API.md, "Webhook secrets at rest").
        webhook_secret: req
            .webhook
            .map(|w| s.secrets.seal(&req.name, w.secret.as_bytes()))
            .transpose()
            .map_err(crate::error::ServerError::from)?,
    };
    if !s.db.insert_vm(&row, now_secs()).await? {
        return Err(ApiError::new(
            ErrorCode::Exists,
            format!("VM {} is already registered", row.name),
        ));
    }
    s.forget_vm(&row.name).await;
    tracing::info!(vm = %row.name, host = %row.host, "VM registered");
    vm_view(&s, &row.name).await.map(Json)
}

async fn vm_view(s: &AppState, name: &str) -> Result<Vm, ApiError> {
    let e = s.vm(name).await?;
    Ok(Vm {
        name: e.row.name.clone(),
        host: e.row.host.clone(),
        policy_id: e.row.policy_id.clone(),
        approved_subsets: e.row.subsets.clone(),
        threshold: e.row.threshold,
        on_alert: e.on_alert,
        has_webhook: e.row.webhook_url.is_some(),
        baseline: e.baseline.as_ref().map(|b| BaselineInfo {
            id: b.id,
            policy_id: b.policy_id.clone(),
            provenance: b.provenance.clone(),
            created: vmattest_api::time::from_secs(b.created),
        }),
    })
}

pub async fn vm(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vm>, ApiError> {
    let e = s.vm(&name).await?;
    caller.require_host(&e.row.host, &name)?;
    vm_view(&s, &name).await.map(Json)
}

/// One digest per page of `region` from hex: another count is refused (`regions`), a digest
/// that does not decode with `code`, naming its page.
pub(crate) fn hex_digests(
    alg: HashAlg,
    region: &Region,
    hex_list: &[String],
    code: ErrorCode,
) -> Result<Vec<Digest>, ApiError> {
    if hex_list.len() as u64 != region.pages {
        return Err(ApiError::new(
            ErrorCode::Regions,
            format!(
                "region {}: {} page digests, expected {}",
                region.name,
                hex_list.len(),
                region.pages
            ),
        ));
    }
    hex_list
        .iter()
        .enumerate()
        .map(|(i, h)| {
            hex::decode(h)
                .ok()
                .and_then(|b| Digest::new(alg, &b))
                .filter(|d| d.as_bytes().len() == alg.digest_len())
                .ok_or_else(|| {
                    ApiError::new(
                        code.clone(),
                        format!(
                            "region {} page {i}: expected a {alg} digest in hex",
                            region.name
                        ),
                    )
                })
        })
        .collect()
}

/// A baseline's patch sites: jump labels (2 or 5 bytes) only with a jump table in the policy
/// and static-call sites (5 bytes) only with static calls, each within a region; all sorted
/// by address and not overlapping.
fn baseline_sites(
    policy: &Policy,
    labels: &[(u64, u8, u64)],
    calls: &[(u64, u8, u64)],
) -> Result<Vec<PatchSite>, ApiError> {
    let bad = |field: &str, i: usize, what: String| {
        ApiError::new(ErrorCode::Regions, format!("{field}[{i}]: {what}"))
    };
    if policy.jump_table.is_none() && !labels.is_empty() {
        return Err(bad(
            "patch_sites",
            0,
            "expected none: the policy has no jump_table".into(),
        ));
    }
    if policy.static_calls.is_none() && !calls.is_empty() {
        return Err(bad(
            "call_sites",
            0,
            "expected none: the policy has no static_calls".into(),
        ));
    }
    let total = labels.len().saturating_add(calls.len());
    if total > MAX_REPORT_SITES {
        return Err(bad(
            "patch_sites",
            MAX_REPORT_SITES,
            format!("expected at most {MAX_REPORT_SITES} sites, found {total}"),
        ));
    }
    let mut out: Vec<PatchSite> = Vec::with_capacity(total);
    for (i, &(addr, len, target)) in labels.iter().enumerate() {
        if len != 2 && len != 5 {
            return Err(bad(
                "patch_sites",
                i,
                format!("expected a length of 2 or 5, found {len}"),
            ));
        }
        out.push(PatchSite {
            addr: GuestAddr(addr),
            len,
            target: GuestAddr(target),
            kind: SiteKind::Label,
        });
    }
    for (i, &(addr, kind, key)) in calls.iter().enumerate() {
        let kind = SiteKind::from_id(kind)
            .filter(|k| *k != SiteKind::Label)
            .ok_or_else(|| {
                bad(
                    "call_sites",
                    i,
                    format!("expected kind 1, 2 or 3, found {kind}"),
                )
            })?;
        out.push(PatchSite {
            addr: GuestAddr(addr),
            len: CALL_SITE_LEN,
            target: GuestAddr(key),
            kind,
        });
    }
    for (i, site) in out.iter().enumerate() {
        let (field, at, prev) = match i.checked_sub(labels.len()) {
            None => ("patch_sites", i, i.checked_sub(1)),
            Some(at) => (
                "call_sites",
                at,
                at.checked_sub(1).map(|p| p + labels.len()),
            ),
        };
        if !policy
            .regions
            .iter()
            .any(|r| site.addr.0 < r.end() && site.end() > r.start.0)
        {
            return Err(bad(
                field,
                at,
                format!("expected a site within a region, found {}", site.addr),
            ));
        }
        if prev
            .and_then(|p| out.get(p))
            .is_some_and(|p| p.end() > site.addr.0)
        {
            return Err(bad(
                field,
                at,
                format!(
                    "expected sites sorted and apart, found {} after the previous",
                    site.addr
                ),
            ));
        }
    }
    out.sort_unstable();
    if let Some(w) = out.windows(2).find(|w| w[0].end() > w[1].addr.0) {
        return Err(bad(
            "call_sites",
            0,
            format!(
                "expected sites apart, found {} and {}",
                w[0].addr, w[1].addr
            ),
        ));
    }
    Ok(out)
}

pub async fn new_baseline(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<BaselineInfo>, ApiError> {
    caller.require(&[Admin])?;
    let req: NewBaseline = json_body(&body)?;
    let vm = s.vm(&name).await?;
    // A baseline for another registered policy is staged: used once the VM moves to it.
    let staged;
    let policy = if req.policy_id == vm.row.policy_id {
        &vm.policy
    } else {
        staged = s.policy(&req.policy_id).await.map_err(|e| {
            if e.code == ErrorCode::NotFound {
                ApiError::new(
                    ErrorCode::PolicyMismatch,
                    format!(
                        "baseline is for policy {}, which is not registered; VM {name} uses {}",
                        req.policy_id, vm.row.policy_id
                    ),
                )
            } else {
                e
            }
        })?;
        &staged
    };
    let alg = policy.alg;
    let mut pages = std::collections::HashMap::new();
    for region in &policy.regions {
        let got = req
            .regions
            .iter()
            .find(|r| r.name == region.name)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Regions,
                    format!("baseline lacks region {}", region.name),
                )
            })?;
        let list = hex_digests(alg, region, &got.pages, ErrorCode::Regions)?;
        pages.insert(region.name.clone(), list);
    }
    if req.regions.len() != policy.regions.len() {
        return Err(ApiError::new(
            ErrorCode::Regions,
            "baseline has regions the policy does not",
        ));
    }
    let sites = baseline_sites(policy, &req.patch_sites, &req.call_sites)?;
    let provenance = serde_json::to_string(&req.provenance)
        .map_err(|e| ApiError::new(ErrorCode::Invalid, e.to_string()))?;
    let now = now_secs();
    let id =
        s.db.insert_baseline(
            &name,
            &req.policy_id,
            &encode_pages(policy, &pages, &sites),
            &provenance,
            now,
        )
        .await?;
    s.forget_vm(&name).await;
    tracing::info!(vm = %name, baseline = id, seq = req.provenance.seq, staged = (req.policy_id != vm.row.policy_id), "golden baseline stored");
    Ok(Json(BaselineInfo {
        id,
        policy_id: req.policy_id,
        provenance: req.provenance,
        created: vmattest_api::time::from_secs(now),
    }))
}

#[derive(Debug, Deserialize)]
pub struct ChallengeQuery {
    subset: Option<String>,
}

pub async fn challenge(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ChallengeQuery>,
) -> Result<Json<Challenge>, ApiError> {
    caller.require(&[Agent, Admin])?;
    let vm = s.vm(&name).await?;
    caller.require_host(&vm.row.host, &name)?;
    let subset = match q.subset {
        Some(sub) if vm.row.subsets.contains(&sub) => sub,
        Some(sub) => {
            return Err(ApiError::new(
                ErrorCode::UnapprovedSubset,
                format!("subset {sub:?} is not approved for VM {name}"),
            ));
        }
        None => vm
            .row
            .subsets
            .first()
            .cloned()
            .unwrap_or_else(|| "all".into()),
    };
    let expires = now_secs() + s.settings.nonce_ttl_secs;
    let nonce = s.nonces.issue(&name, &subset, expires)?;
    s.metrics.challenge();
    Ok(Json(Challenge {
        vm: name,
        nonce: hex::encode(nonce),
        policy_id: vm.policy_id.clone(),
        policy_toml: vm.policy_toml.clone(),
        subset,
        expires: vmattest_api::time::from_secs(expires),
        site_report: vm
            .baseline
            .as_ref()
            .and_then(|b| b.last_passed())
            .map(|d| d.to_hex()),
    }))
}

pub async fn evidence(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<AttestationResult>, ApiError> {
    crate::appraise::submit(&s, &caller, &body).await.map(Json)
}

pub(crate) fn parse_result(id: i64, body: &str) -> Result<AttestationResult, ApiError> {
    let mut r: AttestationResult = crate::state::from_stored(body, "time").map_err(|e| {
        ApiError::from(crate::error::ServerError::Corrupt(format!(
            "result {id}: {e}"
        )))
    })?;
    r.id = id;
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn results(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<AttestationResult>>, ApiError> {
    caller.require(&[Admin, Auditor])?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let rows = s.db.results(&name, limit).await?;
    rows.iter()
        .map(|(id, body)| parse_result(*id, body))
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

pub async fn result(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AttestationResult>, ApiError> {
    caller.require(&[Admin, Auditor])?;
    let id = parse_id("result", &id)?;
    let body =
        s.db.result(id)
            .await?
            .ok_or_else(|| ApiError::not_found("result", &id.to_string()))?;
    parse_result(id, &body).map(Json)
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}
