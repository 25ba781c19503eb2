//! Bearer tokens: issue, list and revoke (admin only). Only SHA-256 hashes are stored; a
//! token's public id is the first 8 bytes of its hash.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use vmattest_api::{NewToken, Role, TokenInfo, TokenIssued};

use crate::auth::{Caller, new_token, token_hash, token_id};
use crate::error::ApiError;
use crate::routes::json_body;
use crate::state::{AppState, now_secs};
use vmattest_api::ErrorCode;

use Role::{Admin, Agent};

pub async fn issue(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<TokenIssued>, ApiError> {
    caller.require(&[Admin])?;
    let req: NewToken = json_body(&body)?;
    match (req.role, &req.host) {
        (Agent, None) => {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                "an agent token needs a host",
            ));
        }
        (Agent, Some(h)) if s.db.hosts(Some(h)).await?.is_empty() => {
            return Err(ApiError::not_found("host", h));
        }
        (Agent, Some(_)) => {}
        (_, Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                "only agent tokens name a host",
            ));
        }
        _ => {}
    }
    let token = new_token()?;
    let hash = token_hash(&token);
    s.db.insert_token(&hash, req.role.name(), req.host.as_deref(), now_secs())
        .await?;
    let id = token_id(&hash);
    tracing::info!(id, role = req.role.name(), host = ?req.host, "token issued");
    Ok(Json(TokenIssued {
        token,
        id,
        role: req.role,
        host: req.host,
    }))
}

pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    caller.require(&[Admin])?;
    Ok(Json(
        tokens(&s).await?.into_iter().map(|(_, t)| t).collect(),
    ))
}

/// Deletes the token at once: the next request that presents it gets 401. The last admin
/// token is kept, so that the server never locks its administrators out.
pub async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    caller.require(&[Admin])?;
    let all = tokens(&s).await?;
    let Some((hash, info)) = all.iter().find(|(_, t)| t.id == id) else {
        return Err(ApiError::not_found("token", &id));
    };
    if info.role == Admin && all.iter().filter(|(_, t)| t.role == Admin).count() == 1 {
        return Err(ApiError::new(
            ErrorCode::LastAdmin,
            format!("token {id} is the last admin token; issue another admin token first"),
        ));
    }
    s.db.delete_token(hash).await?;
    s.forget_token(hash).await;
    tracing::info!(id, role = info.role.name(), host = ?info.host, "token revoked");
    Ok(Json(info.clone()))
}

/// Every token with its stored hash.
async fn tokens(s: &AppState) -> Result<Vec<(Vec<u8>, TokenInfo)>, ApiError> {
    Ok(s.db
        .tokens()
        .await?
        .into_iter()
        .filter_map(|(hash, role, host, created)| {
            let info = TokenInfo {
                id: token_id(&hash),
                role: Role::parse(&role)?,
                host,
                created: vmattest_api::time::from_secs(created),
            };
            Some((hash, info))
        })
        .collect())
}
