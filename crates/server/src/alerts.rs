//! Alerts: listing, and acknowledging an active one. Opening, counting and resolving happen in
//! the writer's transaction (db::writer), next to the result that causes them.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use vmattest_api::time::from_secs;
use vmattest_api::{Alert, AlertState, Role};

use crate::auth::Caller;
use crate::db::AlertRow;
use crate::error::ApiError;
use crate::routes::{MAX_LIMIT, parse_id};
use crate::state::{AppState, now_secs};

pub fn alert_json(a: &AlertRow) -> Alert {
    let state = match (a.resolved_time, a.acknowledged_time) {
        (Some(_), _) => AlertState::Resolved,
        (None, Some(_)) => AlertState::Acknowledged,
        (None, None) => AlertState::Open,
    };
    Alert {
        id: a.id,
        vm: a.vm.clone(),
        cause: a.cause.clone(),
        state,
        result_id: a.result_id,
        time: from_secs(a.time),
        count: u64::try_from(a.count).unwrap_or(0),
        last_result_id: a.last_result_id,
        last_time: from_secs(a.last_time),
        score: u8::try_from(a.score).unwrap_or(0),
        status: a.status.clone(),
        message: a.message.clone(),
        acknowledged_time: a.acknowledged_time.map(from_secs),
        acknowledged_by: a.acknowledged_by.clone(),
        resolved_time: a.resolved_time.map(from_secs),
        webhook: a.webhook,
        webhook_delivered: a.delivered,
        webhook_attempts: u32::try_from(a.attempts).unwrap_or(u32::MAX),
    }
}

#[derive(Debug, Deserialize)]
pub struct AlertQuery {
    limit: Option<i64>,
    vm: Option<String>,
    /// Include resolved alerts (default: active ones only).
    #[serde(default)]
    all: bool,
}

pub async fn alerts(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<AlertQuery>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let rows = s.db.alerts(q.vm.as_deref(), q.all, limit).await?;
    Ok(Json(rows.iter().map(alert_json).collect()))
}

/// `POST /v1/alerts/{id}/ack`: an acknowledged alert stays active, absorbing repeats of its
/// cause without a new webhook, until a passing result resolves it.
pub async fn ack(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Alert>, ApiError> {
    caller.require(&[Role::Admin])?;
    let id = parse_id("alert", &id)?;
    let by = match &caller.host {
        Some(host) => format!("{} ({host})", caller.role.name()),
        None => caller.role.name().to_owned(),
    };
    let row =
        s.db.ack_alert(id, &by, now_secs())
            .await?
            .ok_or_else(|| ApiError::not_found("alert", &id.to_string()))?;
    if row.resolved_time.is_none() {
        tracing::info!(alert = id, vm = %row.vm, by = %by, "alert acknowledged");
    }
    Ok(Json(alert_json(&row)))
}
