//! Alert webhooks: a background task POSTs each alert with its EAR, signed twice (HMAC with the
//! VM's shared secret, and the server's EAR key), and retries with exponential backoff. The
//! delivery state lives in the database, so retries survive a restart.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::alerts::alert_json;
use crate::db::AlertRow;
use crate::error::ServerError;
use crate::state::{AppState, now_secs};

pub const SIGNATURE_HEADER: &str = "x-vmattest-signature";
pub const SERVER_SIGNATURE_HEADER: &str = "x-vmattest-server-signature";

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn hmac_header(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub async fn run(state: AppState) {
    let client = match reqwest::Client::builder()
        .timeout(state.settings.webhook_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client; alerts will not be delivered");
            return;
        }
    };
    loop {
        if let Err(e) = deliver_due(&state, &client).await {
            tracing::error!(error = %e, "webhook delivery pass");
        }
        tokio::select! {
            () = state.webhook_wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn deliver_due(state: &AppState, client: &reqwest::Client) -> Result<(), ServerError> {
    let now = now_secs();
    for alert in state
        .db
        .due_alerts(now, state.settings.webhook_attempts)
        .await?
    {
        let ok = deliver(state, client, &alert).await;
        state.metrics.webhook(ok.is_ok());
        let attempts = alert.attempts + 1;
        match &ok {
            Ok(()) => {
                tracing::info!(alert = alert.id, vm = %alert.vm, attempts, "webhook delivered")
            }
            Err(e) => {
                tracing::warn!(alert = alert.id, vm = %alert.vm, attempts, error = %e, "webhook failed")
            }
        }
        // Backoff 2, 4, 8... seconds between attempts.
        let next = now + (1i64 << attempts.min(16));
        state
            .db
            .mark_alert(alert.id, ok.is_ok(), attempts, next)
            .await?;
    }
    Ok(())
}

async fn deliver(
    state: &AppState,
    client: &reqwest::Client,
    alert: &AlertRow,
) -> Result<(), String> {
    let row = state
        .db
        .vm(&alert.vm)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("VM is gone")?;
    let (Some(url), Some(sealed)) = (row.webhook_url, row.webhook_secret) else {
        return Err("the VM has no webhook".into());
    };
    let secret = state
        .secrets
        .open(&alert.vm, &sealed)
        .map_err(|e| e.to_string())?;
    let ear = match state
        .db
        .result(alert.result_id)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(body) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("ear").cloned())
            .unwrap_or_default(),
        None => serde_json::Value::Null,
    };
    let body = json!({
        "type": "vmattest.alert",
        "alert": alert_json(alert),
        "ear": ear,
    })
    .to_string();
    let server_sig = state
        .ear
        .current()
        .sign_webhook(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, hmac_header(&secret, body.as_bytes()))
        .header(SERVER_SIGNATURE_HEADER, server_sig)
        .header("x-vmattest-delivery", alert.id.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("POST {url}: HTTP {}", resp.status()))
    }
}
