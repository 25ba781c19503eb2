//! Bearer tokens with roles. Tokens are 256-bit random strings shown once; the database keeps
//! only their SHA-256, so a stolen database grants nothing. Lookup is by that digest, which
//! leaks nothing useful through timing because the digest of an unknown token is unpredictable.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest as _, Sha256};
use vmattest_api::Role;

use crate::error::{ApiError, ServerError};
use crate::state::AppState;

const TOKEN_PREFIX: &str = "vmat_";
const MAX_TOKEN_LEN: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// The host an agent acts for.
    pub host: Option<String>,
}

impl Caller {
    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "role {} may not call this endpoint",
                self.role.name()
            )))
        }
    }

    /// Agents act only for the VMs of their own host.
    pub fn require_host(&self, host: &str, vm: &str) -> Result<(), ApiError> {
        match (&self.role, &self.host) {
            (Role::Agent, Some(h)) if h != host => Err(ApiError::forbidden(format!(
                "VM {vm} runs on host {host}, not on this agent's host {h}"
            ))),
            (Role::Agent, None) => Err(ApiError::forbidden("agent token without a host")),
            _ => Ok(()),
        }
    }
}

impl Caller {
    /// An agent acts only for its own host.
    pub fn require_own_host(&self, host: &str) -> Result<(), ApiError> {
        match (&self.role, &self.host) {
            (Role::Agent, Some(h)) if h != host => Err(ApiError::forbidden(format!(
                "this agent's token is for host {h}, not {host}"
            ))),
            (Role::Agent, None) => Err(ApiError::forbidden("agent token without a host")),
            _ => Ok(()),
        }
    }
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token's public id: the first 8 bytes of its stored hash, in hex.
pub fn token_id(hash: &[u8]) -> String {
    hex::encode(&hash[..hash.len().min(8)])
}

/// A new token from the OS's randomness.
pub fn new_token() -> Result<String, ServerError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ServerError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(raw)))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with(TOKEN_PREFIX) && t.len() <= MAX_TOKEN_LEN)
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer vmat_..."))?;
        state
            .caller(&token_hash(token))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown token"))
    }
}
