//! Snapshot attestation on request: a remote party asks, the VM's agent answers with a signed
//! report. A report is accepted only as the answer to a pending request the server issued for
//! that VM: it must carry the request's nonce (compared in constant time) and seq, and be signed
//! within the time window; answering consumes the request in the transaction that stores the
//! report, so a report is accepted once and an old one cannot be posted again as fresh.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use vmattest_api::{NewSnapshotRequest, ReportReceipt, Role, SnapshotRequest, StoredReport};
use vmattest_core::attest::{SignedSnapshotReport, SnapshotReport};

use crate::auth::Caller;
use crate::db::{NewReportRow, SnapshotRequestRow};
use crate::error::ApiError;
use crate::routes::json_body;
use crate::state::{AppState, now_secs};
use vmattest_api::ErrorCode;

use Role::{Admin, Agent, Auditor};

/// The pending request `r` answers, after the checks of docs/API.md ("Snapshot report checks").
fn answered_request(
    r: &SnapshotReport,
    candidates: Vec<SnapshotRequestRow>,
    now: i64,
    window: i64,
) -> Result<SnapshotRequestRow, ApiError> {
    if r.nonce.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MissingNonce,
            format!(
                "report nonce: empty; expected the nonce of a pending snapshot request for VM {}",
                r.vm
            ),
        ));
    }
    let time = i64::try_from(r.time.secs).unwrap_or(i64::MAX);
    if (time - now).abs() > window {
        return Err(ApiError::new(
            ErrorCode::Stale,
            format!(
                "report time {time} is {}s from the server's clock {now}; the window is {window}s",
                time - now
            ),
        ));
    }
    // Every candidate is compared, so that the time taken does not say which one matched.
    let mut found = None;
    for c in candidates {
        if bool::from(c.nonce.as_slice().ct_eq(&r.nonce)) {
            found = Some(c);
        }
    }
    let req = found.ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownNonce,
            format!(
                "report nonce {}: not the nonce of a snapshot request this server made for VM {}",
                hex::encode(&r.nonce),
                r.vm
            ),
        )
    })?;
    if let Some(report_id) = req.report_id {
        return Err(replayed(req.id, Some(report_id)));
    }
    if u64::try_from(req.seq).ok() != Some(r.seq.0) {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "report is about seq {}, snapshot request {} asks about seq {}",
                r.seq.0, req.id, req.seq
            ),
        ));
    }
    if time < req.requested - window {
        return Err(ApiError::new(
            ErrorCode::Stale,
            format!(
                "report signed at {time}, before snapshot request {} was made at {}",
                req.id, req.requested
            ),
        ));
    }
    Ok(req)
}

fn replayed(request: i64, report: Option<i64>) -> ApiError {
    let by = report.map_or_else(String::new, |id| format!(" by report {id}"));
    ApiError::new(
        ErrorCode::ReplayedNonce,
        format!("snapshot request {request} was already answered{by}: a report is accepted once"),
    )
}

pub async fn new_report(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<ReportReceipt>, ApiError> {
    caller.require(&[Agent])?;
    let vm = s.vm(&name).await?;
    caller.require_host(&vm.row.host, &name)?;
    let signed = SignedSnapshotReport::decode(&body)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("snapshot report: {e}")))?;
    crate::appraise::check_host_signature(&signed, &vm, "snapshot report")?;
    let r = signed.value();
    if r.vm != name {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!("report is for VM {}, posted for {name}", r.vm),
        ));
    }
    let now = now_secs();
    let candidates = s.db.snapshot_request_nonces(&name).await?;
    let req = answered_request(r, candidates, now, s.settings.window_secs)?;
    let row = NewReportRow {
        vm: &name,
        seq: req.seq,
        verdict: r.verdict(),
        time: now,
        report: &body,
    };
    let id =
        s.db.store_answer(req.id, &row)
            .await?
            .ok_or_else(|| replayed(req.id, None))?;
    s.metrics.report();
    tracing::info!(vm = %name, seq = r.seq.0, verdict = r.verdict(), request = req.id, "snapshot report stored");
    Ok(Json(ReportReceipt {
        id,
        vm: name,
        seq: r.seq.0,
        verdict: r.verdict().into(),
        request_id: Some(req.id),
    }))
}

pub async fn reports(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<StoredReport>>, ApiError> {
    caller.require(&[Admin, Auditor])?;
    let rows = s.db.reports(&name).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| StoredReport {
                id: r.id,
                vm: name.clone(),
                seq: u64::try_from(r.seq).unwrap_or(0),
                verdict: r.verdict,
                time: vmattest_api::time::from_secs(r.time),
                report: hex::encode(r.report),
            })
            .collect(),
    ))
}

pub async fn new_snapshot_request(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<SnapshotRequest>, ApiError> {
    caller.require(&[Admin, Auditor])?;
    let req: NewSnapshotRequest = json_body(&body)?;
    s.vm(&name).await?;
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| crate::error::ServerError::Random(e.to_string()))?;
    let now = now_secs();
    let id =
        s.db.insert_snapshot_request(&name, req.seq, &nonce, now)
            .await?;
    tracing::info!(vm = %name, seq = req.seq, request = id, "snapshot attestation requested");
    Ok(Json(SnapshotRequest {
        id,
        vm: name,
        seq: req.seq,
        nonce: hex::encode(nonce),
        requested: vmattest_api::time::from_secs(now),
        report_id: None,
    }))
}

#[derive(Debug, Deserialize)]
pub struct RequestQuery {
    pending: Option<bool>,
}

pub async fn snapshot_requests(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<RequestQuery>,
) -> Result<Json<Vec<SnapshotRequest>>, ApiError> {
    let vm = s.vm(&name).await?;
    caller.require_host(&vm.row.host, &name)?;
    // Agents see only what they still have to answer.
    let pending = q.pending.unwrap_or(false) || caller.role == Agent;
    let rows = s.db.snapshot_requests(&name, pending).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SnapshotRequest {
                id: r.id,
                vm: name.clone(),
                seq: u64::try_from(r.seq).unwrap_or(0),
                nonce: hex::encode(r.nonce),
                requested: vmattest_api::time::from_secs(r.requested),
                report_id: r.report_id,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use vmattest_core::alg::{Digest, HashAlg};
    use vmattest_core::attest::ComponentCheck;
    use vmattest_core::chain::SeqNo;
    use vmattest_core::record::UnixTime;

    use super::*;

    fn report(nonce: &[u8], secs: u64, seq: u64) -> SnapshotReport {
        let d = Digest::new(HashAlg::Sha256, &[1; 32]).unwrap();
        SnapshotReport {
            vm: "vm1".into(),
            time: UnixTime { secs, nanos: 0 },
            nonce: nonce.to_vec(),
            seq: SeqNo(seq),
            link: d,
            components: vec![ComponentCheck {
                name: "ram".into(),
                expected: d,
                found: d,
            }],
            key_ids: vec![],
        }
    }

    fn request(
        id: i64,
        nonce: &[u8],
        requested: i64,
        report_id: Option<i64>,
    ) -> SnapshotRequestRow {
        SnapshotRequestRow {
            id,
            seq: 3,
            nonce: nonce.to_vec(),
            requested,
            report_id,
        }
    }

    #[test]
    fn a_report_answers_one_pending_request_in_time() {
        let code = |r: &SnapshotReport, c: Vec<SnapshotRequestRow>| {
            answered_request(r, c, 1000, 60)
                .map(|x| x.id)
                .map_err(|e| e.code)
        };
        let pending = || {
            vec![
                request(1, &[7; 32], 990, None),
                request(2, &[8; 32], 995, None),
            ]
        };
        assert_eq!(code(&report(&[8; 32], 1000, 3), pending()), Ok(2));
        assert_eq!(
            code(&report(&[], 1000, 3), pending()),
            Err(ErrorCode::MissingNonce)
        );
        assert_eq!(
            code(&report(&[9; 32], 1000, 3), pending()),
            Err(ErrorCode::UnknownNonce)
        );
        assert_eq!(
            code(&report(&[8; 32], 900, 3), pending()),
            Err(ErrorCode::Stale)
        );
        assert_eq!(
            code(&report(&[8; 32], 1100, 3), pending()),
            Err(ErrorCode::Stale)
        );
        assert_eq!(
            code(&report(&[8; 32], 1000, 4), pending()),
            Err(ErrorCode::Invalid)
        );
        let answered = vec![request(2, &[8; 32], 995, Some(5))];
        assert_eq!(
            code(&report(&[8; 32], 1000, 3), answered),
            Err(ErrorCode::ReplayedNonce)
        );
        // Signed well before the request was made: not an answer to it.
        let later = vec![request(2, &[8; 32], 1050, None)];
        assert_eq!(
            code(&report(&[8; 32], 980, 3), later),
            Err(ErrorCode::Stale)
        );
    }
}
