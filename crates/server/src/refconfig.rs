//! Reference configurations (docs/CONFIG.md) and the pre-launch check of a measured
//! configuration against one: the agent sends the opening and the host-signed statement of its
//! root; the server checks the signature and the root, compares every parameter with the
//! reference, and signs the verdict with its EAR key.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::json;
use vmattest_api::{
    ConfigCheckRequest, ConfigCheckResult, ConfigMismatch, NewReferenceConfig, ReferenceConfigInfo,
    Role,
};
use vmattest_core::config::{ConfigOpening, ConfigParam, Reference, SignedConfigStatement};

use crate::auth::Caller;
use crate::error::{ApiError, ServerError};
use crate::routes::json_body;
use crate::state::{AppState, VmEntry, now_secs};
use vmattest_api::ErrorCode;

use Role::{Admin, Agent, Auditor};

fn no_reference(vm: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("VM {vm} has no reference configuration"),
    )
}

pub async fn put_reference_config(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<ReferenceConfigInfo>, ApiError> {
    caller.require(&[Admin])?;
    let req: NewReferenceConfig = json_body(&body)?;
    s.vm(&name).await?;
    let reference = Reference::parse(&req.toml)
        .map_err(|e| ApiError::new(ErrorCode::Invalid, e.to_string()))?;
    let now = now_secs();
    s.db.put_reference_config(&name, &req.toml, now).await?;
    tracing::info!(
        vm = %name,
        rules = reference.rules().len(),
        strict = reference.strict(),
        "reference configuration stored"
    );
    Ok(Json(ReferenceConfigInfo {
        vm: name,
        toml: req.toml,
        created: vmattest_api::time::from_secs(now),
    }))
}

pub async fn reference_config(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ReferenceConfigInfo>, ApiError> {
    caller.require(&[Admin, Auditor, Agent])?;
    let vm = s.vm(&name).await?;
    caller.require_host(&vm.row.host, &name)?;
    let (toml, created) =
        s.db.reference_config(&name)
            .await?
            .ok_or_else(|| no_reference(&name))?;
    Ok(Json(ReferenceConfigInfo {
        vm: name,
        toml,
        created: vmattest_api::time::from_secs(created),
    }))
}

fn decode_hex(what: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(text.trim())
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("{what}: expected hex: {e}")))
}

pub async fn verify_config(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<ConfigCheckResult>, ApiError> {
    caller.require(&[Agent, Admin])?;
    let vm = s.vm(&name).await?;
    caller.require_host(&vm.row.host, &name)?;
    let out = check(&s, &vm, &name, &body).await;
    s.metrics.config_check(&out);
    out.map(Json)
}

async fn check(
    s: &AppState,
    vm: &VmEntry,
    name: &str,
    body: &[u8],
) -> Result<ConfigCheckResult, ApiError> {
    let req: ConfigCheckRequest = json_body(body)?;
    let signed = SignedConfigStatement::decode(&decode_hex("statement", &req.statement)?)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("statement: {e}")))?;
    let opening = ConfigOpening::decode(&decode_hex("opening", &req.opening)?)
        .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("opening: {e}")))?;
    crate::appraise::check_host_signature(&signed, vm, "config statement")?;
    let statement = signed.value();
    if statement.vm != name {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "config statement is for VM {}, posted for {name}",
                statement.vm
            ),
        ));
    }
    let root = opening.root();
    if !root.ct_eq(&statement.root) {
        return Err(ApiError::new(
            ErrorCode::RootMismatch,
            format!(
                "the opening's root is {root}, the statement signs {}",
                statement.root
            ),
        ));
    }
    if opening.len() != statement.count as usize {
        return Err(ApiError::new(
            ErrorCode::RootMismatch,
            format!(
                "the opening has {} params, the statement counts {}",
                opening.len(),
                statement.count
            ),
        ));
    }
    let (toml, _) = s.db.reference_config(name).await?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NoReference,
            format!("VM {name} has no reference configuration"),
        )
    })?;
    let reference = Reference::parse(&toml).map_err(|e| {
        ApiError::from(ServerError::Corrupt(format!(
            "reference configuration of VM {name}: {e}"
        )))
    })?;
    let params: Vec<ConfigParam> = opening.params().iter().map(|(p, _)| p.clone()).collect();
    let mismatches: Vec<ConfigMismatch> = reference
        .check(&params)
        .into_iter()
        .map(|m| ConfigMismatch {
            name: m.name,
            expected: m.expected,
            found: m.found,
        })
        .collect();
    let ok = mismatches.is_empty();
    let root = root.to_hex();
    let claims = json!({
        "iat": now_secs(),
        "vmattest.vm": name,
        "vmattest.config-root": root,
        "vmattest.config-ok": ok,
        "vmattest.mismatches": mismatches
            .iter()
            .map(|m| json!({ "name": m.name, "expected": m.expected, "found": m.found }))
            .collect::<Vec<_>>(),
    });
    let result = s.ear.current().sign_jwt(&claims)?;
    tracing::info!(
        vm = %name,
        root = %root,
        params = opening.len(),
        ok,
        mismatches = mismatches.len(),
        names = %mismatches.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(","),
        "configuration checked against the reference"
    );
    Ok(ConfigCheckResult {
        vm: name.to_owned(),
        root,
        ok,
        mismatches,
        result,
    })
}
