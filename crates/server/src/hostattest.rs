//! Host attestation (docs/API.md): host policies by group, challenges, and the appraisal of a
//! host's TPM quote, by its registered attestation key, into a signed host EAR.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use vmattest_api::host::{
    Event, HostAttestation, HostChallenge, HostEvidence, HostPolicy, HostPolicyEntry,
    MAX_EVENT_TEXT, MAX_EVENTS, replay,
};
use vmattest_api::{ErrorCode, Role};
use vmattest_core::attest::TrustVector;

use crate::auth::Caller;
use crate::db::{HostResultRow, HostTpmRow};
use crate::ear::HostEarClaims;
use crate::error::ApiError;
use crate::nonce::NonceError;
use crate::routes::{json_body, name_ok};
use crate::state::{AppState, now_secs};

use Role::{Admin, Agent, Auditor};

/// PCRs every host quote holds: the boot chain.
const BOOT_PCRS: std::ops::RangeInclusive<u32> = 0..=7;
const MAX_PCR: u32 = 23;
const MAX_POLICY_EVENTS: usize = 64;

/// The nonce subject of a host: no VM name holds a ':'.
fn subject(host: &str) -> String {
    format!("host:{host}")
}

fn invalid(msg: String) -> ApiError {
    ApiError::new(ErrorCode::Invalid, msg)
}

fn sha256_hex(what: &str, text: &str) -> Result<[u8; 32], ApiError> {
    let mut v = [0u8; 32];
    hex::decode_to_slice(text, &mut v)
        .map_err(|_| invalid(format!("{what}: expected 64 hex digits, found {text:?}")))?;
    Ok(v)
}

fn check_policy(group: &str, p: &HostPolicy) -> Result<(), ApiError> {
    if p.pcrs.is_empty() && p.events.is_empty() {
        return Err(invalid(format!(
            "host policy {group}: expected golden PCRs or events"
        )));
    }
    for (i, v) in &p.pcrs {
        if *i > MAX_PCR {
            return Err(invalid(format!(
                "host policy {group}: PCR {i}: expected 0 to 23"
            )));
        }
        sha256_hex(&format!("host policy {group}: PCR {i}"), v)?;
    }
    if p.events.len() > MAX_POLICY_EVENTS {
        return Err(invalid(format!(
            "host policy {group}: {} events, expected at most {MAX_POLICY_EVENTS}",
            p.events.len()
        )));
    }
    for e in &p.events {
        if !(16..=MAX_PCR).contains(&e.pcr)
            || e.kind.len() > MAX_EVENT_TEXT
            || e.value.len() > MAX_EVENT_TEXT
        {
            return Err(invalid(format!(
                "host policy {group}: event {} in PCR {}: expected PCR 16 to 23 and at most {MAX_EVENT_TEXT} bytes of kind and value",
                e.kind, e.pcr
            )));
        }
    }
    Ok(())
}

/// JSON this server stored; a row that does not parse is a corrupt database.
pub(crate) fn stored<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::from(crate::error::ServerError::Corrupt(format!("{what}: {e}"))))
}

fn entry(group: String, body: &str, created: i64) -> Result<HostPolicyEntry, ApiError> {
    let policy: HostPolicy = stored(&format!("host policy {group}"), body)?;
    Ok(HostPolicyEntry {
        group,
        policy,
        created: vmattest_api::time::from_secs(created),
    })
}

/// `PUT /v1/host-policies/{group}`: creates or replaces a group's host policy.
pub async fn put_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
    body: Bytes,
) -> Result<Json<HostPolicyEntry>, ApiError> {
    caller.require(&[Admin])?;
    name_ok("group", &group)?;
    let policy: HostPolicy = json_body(&body)?;
    check_policy(&group, &policy)?;
    let text =
        serde_json::to_string(&policy).map_err(|e| invalid(format!("host policy {group}: {e}")))?;
    let now = now_secs();
    s.db.put_host_policy(&group, &text, now).await?;
    tracing::info!(group = %group, pcrs = policy.pcrs.len(), "host policy set");
    entry(group, &text, now).map(Json)
}

/// `GET /v1/host-policies`.
pub async fn policies(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<HostPolicyEntry>>, ApiError> {
    caller.require(&[Admin, Auditor])?;
    let rows = s.db.host_policies(None).await?;
    rows.into_iter()
        .map(|(g, body, created)| entry(g, &body, created))
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

/// `DELETE /v1/host-policies/{group}`.
pub async fn delete_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(group): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require(&[Admin])?;
    if !s.db.delete_host_policy(&group).await? {
        return Err(ApiError::not_found("host policy", &group));
    }
    Ok(Json(serde_json::json!({ "deleted": group })))
}

/// The host's TPM keys and group; refused for a host registered without a TPM.
pub(crate) async fn host_tpm(s: &AppState, host: &str) -> Result<(Vec<u8>, HostTpmRow), ApiError> {
    let row =
        s.db.host_tpm(host)
            .await?
            .ok_or_else(|| ApiError::not_found("host", host))?;
    let ak = row.ak.clone().ok_or_else(|| {
        ApiError::new(
            ErrorCode::TpmBinding,
            format!("host {host} has no attestation key: register it with a TPM-resident key (remote host add --ak)"),
        )
    })?;
    Ok((ak, row))
}

/// `POST /v1/hosts/{host}/challenge`: a nonce for the host's next quote.
pub async fn challenge(
    State(s): State<AppState>,
    caller: Caller,
    Path(host): Path<String>,
) -> Result<Json<HostChallenge>, ApiError> {
    caller.require(&[Agent, Admin])?;
    caller.require_own_host(&host)?;
    host_tpm(&s, &host).await?;
    let expires = now_secs() + s.settings.nonce_ttl_secs;
    let nonce = s.nonces.issue(&subject(&host), "", expires)?;
    Ok(Json(HostChallenge {
        host,
        nonce: hex::encode(nonce),
        expires: vmattest_api::time::from_secs(expires),
    }))
}

/// The quoted PCRs, checked: ascending, distinct, at most PCR 23, the boot PCRs included.
fn quoted_pcrs(ev: &HostEvidence) -> Result<Vec<(u32, [u8; 32])>, ApiError> {
    if ev.pcrs.len() > (MAX_PCR + 1) as usize {
        return Err(invalid(format!(
            "{} PCRs, expected at most 24",
            ev.pcrs.len()
        )));
    }
    let mut out: Vec<(u32, [u8; 32])> = Vec::with_capacity(ev.pcrs.len());
    for p in &ev.pcrs {
        if p.index > MAX_PCR || out.last().is_some_and(|(i, _)| *i >= p.index) {
            return Err(invalid(format!(
                "pcrs: PCR {} out of order or above 23",
                p.index
            )));
        }
        out.push((p.index, sha256_hex(&format!("PCR {}", p.index), &p.sha256)?));
    }
    if let Some(i) = BOOT_PCRS.clone().find(|i| !out.iter().any(|(q, _)| q == i)) {
        return Err(invalid(format!(
            "pcrs: PCR {i} is not quoted; a host quote holds PCRs 0 to 7"
        )));
    }
    Ok(out)
}

/// Each quoted PCR that has events must be what they replay to; events of PCRs not quoted are
/// refused.
fn check_events(events: &[Event], pcrs: &[(u32, [u8; 32])]) -> Result<(), ApiError> {
    if events.len() > MAX_EVENTS {
        return Err(invalid(format!(
            "{} events, expected at most {MAX_EVENTS}",
            events.len()
        )));
    }
    for e in events {
        if e.kind.len() > MAX_EVENT_TEXT || e.value.len() > MAX_EVENT_TEXT {
            return Err(invalid(format!(
                "event {}: over {MAX_EVENT_TEXT} bytes",
                e.kind
            )));
        }
        if !pcrs.iter().any(|(i, _)| *i == e.pcr) {
            return Err(invalid(format!(
                "event {} is for PCR {}, which is not quoted",
                e.kind, e.pcr
            )));
        }
    }
    for (i, v) in pcrs {
        if !events.iter().any(|e| e.pcr == *i) {
            continue;
        }
        let replayed = replay(events, *i).map_err(|e| invalid(e.to_string()))?;
        if replayed != *v {
            return Err(ApiError::new(
                ErrorCode::BadSignature,
                format!(
                    "PCR {i}: the event log replays to {}, the quote says {}",
                    hex::encode(replayed),
                    hex::encode(v)
                ),
            ));
        }
    }
    Ok(())
}

/// Compares a verified quote with a policy: one line per difference, naming the PCR or event.
pub fn appraise(
    policy: Option<&HostPolicy>,
    group: &str,
    pcrs: &[(u32, [u8; 32])],
    events: &[Event],
) -> (TrustVector, Vec<String>) {
    let mut vector = TrustVector {
        instance_identity: 2,
        hardware: 2,
        ..TrustVector::default()
    };
    let Some(policy) = policy else {
        vector.configuration = 32;
        return (vector, vec![format!("no host policy for group {group}")]);
    };
    let mut boot_ok = true;
    let mut config_ok = true;
    let mut mismatches = Vec::new();
    for (i, want) in &policy.pcrs {
        let quoted = pcrs
            .iter()
            .find(|(q, _)| q == i)
            .map(|(_, v)| hex::encode(v));
        if quoted.as_deref() == Some(want.to_ascii_lowercase().as_str()) {
            continue;
        }
        mismatches.push(format!(
            "PCR {i}: {}, the policy wants {want}",
            quoted.as_deref().unwrap_or("not quoted")
        ));
        if BOOT_PCRS.contains(i) {
            boot_ok = false;
        } else {
            config_ok = false;
        }
    }
    for r in &policy.events {
        if !events
            .iter()
            .any(|e| e.pcr == r.pcr && e.kind == r.kind && e.value == r.value)
        {
            mismatches.push(format!(
                "PCR {}: no event {} {:?}, which the policy requires",
                r.pcr, r.kind, r.value
            ));
            config_ok = false;
        }
    }
    vector.executables = if boot_ok { 2 } else { 96 };
    vector.configuration = if config_ok { 2 } else { 96 };
    (vector, mismatches)
}

fn result_json(row: &HostResultRow) -> Result<HostAttestation, ApiError> {
    let mismatches: Vec<String> = stored(&format!("host result {}", row.id), &row.mismatches)?;
    Ok(HostAttestation {
        id: row.id,
        host: row.host.clone(),
        group: row.group.clone(),
        time: vmattest_api::time::from_secs(row.time),
        status: row.status.clone(),
        mismatches,
        ear: row.ear.clone(),
    })
}

/// `POST /v1/hosts/{host}/attest`: appraises a quote over a nonce of this server.
pub async fn attest(
    State(s): State<AppState>,
    caller: Caller,
    Path(host): Path<String>,
    body: Bytes,
) -> Result<Json<HostAttestation>, ApiError> {
    caller.require(&[Agent])?;
    caller.require_own_host(&host)?;
    let ev: HostEvidence = json_body(&body)?;
    appraise_host(&s, &host, &ev)
        .await
        .map(|a| Json(a.attestation))
}

/// A stored appraisal, with the keys of the TPM that made the quote.
pub(crate) struct Appraised {
    pub attestation: HostAttestation,
    /// The attestation key's TPM name.
    pub ak_name: Vec<u8>,
    pub ek: Option<Vec<u8>>,
}

/// Checks `ev` (a quote of `host` over a nonce of this server), appraises it against the
/// host's group policy, spends the nonce and stores the appraisal.
pub(crate) async fn appraise_host(
    s: &AppState,
    host: &str,
    ev: &HostEvidence,
) -> Result<Appraised, ApiError> {
    let (ak_bytes, tpm) = host_tpm(s, host).await?;
    let group = tpm.group;
    let nonce = hex::decode(&ev.nonce)
        .map_err(|_| invalid(format!("nonce: expected hex, found {:?}", ev.nonce)))?;
    let now = now_secs();
    let expires = s
        .nonces
        .check(&nonce, &subject(host), "", now)
        .map_err(|e| match e {
            NonceError::Unknown => ApiError::new(
                ErrorCode::UnknownNonce,
                format!(
                    "nonce {} was not issued by this server for host {host}",
                    ev.nonce
                ),
            ),
            NonceError::Expired { expires } => ApiError::new(
                ErrorCode::ExpiredNonce,
                format!("nonce expired at {expires}, {}s ago", now - expires),
            ),
        })?;
    let pcrs = quoted_pcrs(ev)?;
    let attest = hex::decode(&ev.attest).map_err(|_| invalid("attest: expected hex".into()))?;
    let mut raw_sig = [0u8; 64];
    hex::decode_to_slice(&ev.signature, &mut raw_sig)
        .map_err(|_| invalid("signature: expected 128 hex digits (r || s)".into()))?;
    let ak = vmattest_quote::parse_public_ecc_p256(&ak_bytes).map_err(|e| {
        ApiError::from(crate::error::ServerError::Corrupt(format!(
            "host {host} AK: {e}"
        )))
    })?;
    let sig = vmattest_quote::Signature::from_raw(&raw_sig)
        .map_err(|e| invalid(format!("signature: {e}")))?;
    vmattest_quote::verify_quote(&ak, &attest, &sig, &nonce, &pcrs)
        .map_err(|e| ApiError::new(ErrorCode::BadSignature, format!("host {host} quote: {e}")))?;
    check_events(&ev.events, &pcrs)?;

    let policy = s.db.host_policies(Some(&group)).await?;
    let policy = match policy.first() {
        Some((g, body, created)) => Some(entry(g.clone(), body, *created)?.policy),
        None => None,
    };
    let (vector, mismatches) = appraise(policy.as_ref(), &group, &pcrs, &ev.events);
    let ear = s.ear.current().host_ear(&HostEarClaims {
        host,
        group: &group,
        iat: now,
        nonce: &nonce,
        vector: &vector,
        pcrs: &pcrs,
        mismatches: &mismatches,
    })?;
    let mut row = HostResultRow {
        id: 0,
        host: host.to_owned(),
        group,
        time: now,
        status: vector.status().name().to_string(),
        mismatches: serde_json::to_string(&mismatches).unwrap_or_else(|_| "[]".into()),
        ear,
    };
    row.id =
        s.db.store_host_result(&nonce, expires, &row)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::ReplayedNonce,
                    format!("nonce {} was used before", ev.nonce),
                )
            })?;
    tracing::info!(host = %host, status = %row.status, mismatches = mismatches.len(), "host appraised");
    Ok(Appraised {
        attestation: result_json(&row)?,
        ak_name: ak.name().map(<[u8]>::to_vec).unwrap_or_default(),
        ek: tpm.ek,
    })
}

/// `GET /v1/hosts/{host}/attestations`: the host's appraisals, newest first.
pub async fn attestations(
    State(s): State<AppState>,
    caller: Caller,
    Path(host): Path<String>,
) -> Result<Json<Vec<HostAttestation>>, ApiError> {
    caller.require(&[Admin, Auditor, Agent])?;
    caller.require_own_host(&host)?;
    s.db.host_results(&host, 100)
        .await?
        .iter()
        .map(result_json)
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmattest_api::host::EventRule;

    fn pcrs() -> Vec<(u32, [u8; 32])> {
        (0..8)
            .map(|i| (i, [u8::try_from(i).unwrap(); 32]))
            .chain([(23, [9; 32])])
            .collect()
    }

    #[test]
    fn appraisal_names_each_difference_and_rates_it() {
        let events = vec![Event::new(23, "vmattest", "1.0".into())];
        let mut policy = HostPolicy::default();
        for (i, v) in pcrs() {
            policy.pcrs.insert(i, hex::encode(v));
        }
        policy.events.push(EventRule {
            pcr: 23,
            kind: "vmattest".into(),
            value: "1.0".into(),
        });
        let (v, m) = appraise(Some(&policy), "g", &pcrs(), &events);
        assert!(m.is_empty(), "{m:?}");
        assert_eq!(v.status().name(), "affirming");

        let mut boot = pcrs();
        boot[4].1 = [0xee; 32];
        let (v, m) = appraise(Some(&policy), "g", &boot, &events);
        assert_eq!(m.len(), 1);
        assert!(
            m[0].starts_with(&format!("PCR 4: {}", "ee".repeat(32))),
            "{m:?}"
        );
        assert_eq!((v.executables, v.configuration), (96, 2));
        assert_eq!(v.status().name(), "contraindicated");

        let (v, m) = appraise(Some(&policy), "g", &pcrs()[..8], &[]);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("PCR 23: not quoted"), "{m:?}");
        assert!(m[1].starts_with("PCR 23: no event vmattest"), "{m:?}");
        assert_eq!((v.executables, v.configuration), (2, 96));

        let (v, m) = appraise(None, "g", &pcrs(), &events);
        assert_eq!(m, ["no host policy for group g"]);
        assert_eq!(v.status().name(), "warning");
    }

    #[test]
    fn policies_and_quotes_out_of_range_are_refused() {
        let mut p = HostPolicy::default();
        assert!(check_policy("g", &p).is_err());
        p.pcrs.insert(24, "00".repeat(32));
        assert!(check_policy("g", &p).is_err());
        p.pcrs.clear();
        p.pcrs.insert(3, "zz".into());
        assert!(check_policy("g", &p).is_err());
        p.pcrs.clear();
        p.events.push(EventRule {
            pcr: 7,
            kind: "k".into(),
            value: "v".into(),
        });
        assert!(check_policy("g", &p).is_err());

        let ev = |pcrs: Vec<u32>| HostEvidence {
            nonce: String::new(),
            attest: String::new(),
            signature: String::new(),
            pcrs: pcrs
                .into_iter()
                .map(|index| vmattest_api::host::PcrValue {
                    index,
                    sha256: "00".repeat(32),
                })
                .collect(),
            events: Vec::new(),
        };
        assert!(quoted_pcrs(&ev((0..8).collect())).is_ok());
        assert!(quoted_pcrs(&ev((1..8).collect())).is_err(), "PCR 0 missing");
        assert!(
            quoted_pcrs(&ev(vec![0, 1, 2, 3, 4, 5, 7, 6])).is_err(),
            "order"
        );
        assert!(
            quoted_pcrs(&ev((0..8).chain([24]).collect())).is_err(),
            "range"
        );
        let stray = vec![Event::new(16, "k", "v".into())];
        assert!(
            check_events(&stray, &pcrs()).is_err(),
            "event of an unquoted PCR"
        );
    }
}
