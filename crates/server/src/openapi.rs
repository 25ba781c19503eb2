//! The OpenAPI 3.1 document, built from one route table that a test checks against the router.

use serde_json::{Map, Value, json};

/// `(method, path, roles, summary, request body schema, response schema)`.
pub type Route = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
);

pub const ROUTES: &[Route] = &[
    (
        "get",
        "/v1/health",
        "public",
        "Liveness and database kind",
        None,
        "Health",
    ),
    (
        "get",
        "/v1/openapi.json",
        "public",
        "This document",
        None,
        "object",
    ),
    (
        "get",
        "/v1/ear-key",
        "public",
        "The key that signs EARs and webhooks",
        None,
        "EarKey",
    ),
    (
        "post",
        "/v1/ear-key/rotate",
        "admin",
        "Replace the EAR key (?alg=ed25519|p384); the old one stays in the JWKS",
        None,
        "EarKey",
    ),
    (
        "get",
        "/.well-known/jwks.json",
        "public",
        "The current and retired EAR keys (RFC 7517 JWK set)",
        None,
        "Jwks",
    ),
    (
        "get",
        "/metrics",
        "admin, auditor",
        "Prometheus metrics (text)",
        None,
        "text",
    ),
    (
        "post",
        "/v1/tokens",
        "admin",
        "Issue a token (shown once)",
        Some("NewToken"),
        "TokenIssued",
    ),
    (
        "get",
        "/v1/tokens",
        "admin",
        "List tokens by id (never the tokens)",
        None,
        "TokenInfoList",
    ),
    (
        "delete",
        "/v1/tokens/{id}",
        "admin",
        "Revoke a token at once (not the last admin token)",
        None,
        "TokenInfo",
    ),
    (
        "post",
        "/v1/hosts",
        "admin",
        "Register a host and its evidence key",
        Some("NewHost"),
        "Host",
    ),
    (
        "get",
        "/v1/hosts",
        "admin, auditor",
        "List hosts",
        None,
        "HostList",
    ),
    (
        "post",
        "/v1/hosts/{host}/challenge",
        "agent (own host), admin",
        "A nonce for the host's next TPM quote",
        None,
        "HostChallenge",
    ),
    (
        "post",
        "/v1/hosts/{host}/attest",
        "agent (own host)",
        "Appraise the host's TPM quote against its group's host policy; a host EAR",
        Some("HostEvidence"),
        "HostAttestation",
    ),
    (
        "put",
        "/v1/vms/{vm}/key",
        "admin, agent (own host)",
        "Hold a VM chain's secret (sealed) for attested release",
        Some("VmKey"),
        "VmKeyInfo",
    ),
    (
        "post",
        "/v1/vms/{vm}/key/release",
        "agent (the VM's host or one it may be released to)",
        "Release the VM's key, wrapped for the caller's TPM, when its quote satisfies its host policy",
        Some("KeyRelease"),
        "ReleasedKey",
    ),
    (
        "get",
        "/v1/hosts/{host}/attestations",
        "admin, auditor, agent (own host)",
        "The host's appraisals, newest first",
        None,
        "HostAttestationList",
    ),
    (
        "get",
        "/v1/host-policies",
        "admin, auditor",
        "List host policies",
        None,
        "HostPolicyEntryList",
    ),
    (
        "put",
        "/v1/host-policies/{group}",
        "admin",
        "Create or replace a host group's policy",
        Some("HostPolicy"),
        "HostPolicyEntry",
    ),
    (
        "delete",
        "/v1/host-policies/{group}",
        "admin",
        "Delete a host group's policy",
        None,
        "object",
    ),
    (
        "post",
        "/v1/policies",
        "admin",
        "Store a resolved region policy",
        Some("NewPolicy"),
        "PolicyInfo",
    ),
    (
        "get",
        "/v1/policies/{id}",
        "any",
        "A policy by id",
        None,
        "PolicyInfo",
    ),
    (
        "post",
        "/v1/vms",
        "admin",
        "Register a VM",
        Some("NewVm"),
        "Vm",
    ),
    (
        "get",
        "/v1/vms/{vm}",
        "any (agent: own host)",
        "A VM",
        None,
        "Vm",
    ),
    (
        "post",
        "/v1/vms/{vm}/baseline",
        "admin",
        "Store a golden baseline",
        Some("NewBaseline"),
        "BaselineInfo",
    ),
    (
        "put",
        "/v1/vms/{vm}/baseline/{id}/bytes/{region}",
        "admin",
        "The bytes of one region of a baseline, zstd, checked against its page digests",
        Some("zstd"),
        "BaselineInfo",
    ),
    (
        "put",
        "/v1/vms/{vm}/policy",
        "admin",
        "Move a VM to another registered policy",
        Some("VmPolicy"),
        "Vm",
    ),
    (
        "post",
        "/v1/vms/{vm}/challenge",
        "agent (own host), admin",
        "Issue a single-use nonce",
        None,
        "Challenge",
    ),
    (
        "post",
        "/v1/evidence",
        "agent (own host)",
        "Appraise signed evidence",
        Some("octet-stream"),
        "AttestationResult",
    ),
    (
        "get",
        "/v1/vms/{vm}/results",
        "admin, auditor",
        "Results, newest first",
        None,
        "ResultList",
    ),
    (
        "get",
        "/v1/results/{id}",
        "admin, auditor",
        "One result",
        None,
        "AttestationResult",
    ),
    (
        "post",
        "/v1/results/{id}/locate",
        "agent (own host)",
        "Which pages of a region that did not match differ from the baseline",
        Some("LocateRequest"),
        "Located",
    ),
    (
        "post",
        "/v1/results/{id}/pages",
        "agent (own host)",
        "Name the differing bytes of those pages in the result and its alert",
        Some("PagesRequest"),
        "AttestationResult",
    ),
    (
        "get",
        "/v1/alerts",
        "admin, auditor",
        "Active alerts (?all=true: resolved too), newest first; one per VM and cause",
        None,
        "AlertList",
    ),
    (
        "post",
        "/v1/alerts/{id}/ack",
        "admin",
        "Acknowledge an alert: it counts repeats without webhooks until resolved",
        None,
        "Alert",
    ),
    (
        "post",
        "/v1/vms/{vm}/reports",
        "agent (own host)",
        "Store a signed snapshot report",
        Some("octet-stream"),
        "ReportReceipt",
    ),
    (
        "get",
        "/v1/vms/{vm}/reports",
        "admin, auditor",
        "Snapshot reports",
        None,
        "ReportList",
    ),
    (
        "post",
        "/v1/vms/{vm}/snapshot-requests",
        "admin, auditor",
        "Ask the agent to compare the running VM with a snapshot",
        Some("NewSnapshotRequest"),
        "SnapshotRequest",
    ),
    (
        "get",
        "/v1/vms/{vm}/snapshot-requests",
        "any (agent: own host, pending only)",
        "Snapshot requests, newest first",
        None,
        "SnapshotRequestList",
    ),
    (
        "put",
        "/v1/vms/{vm}/reference-config",
        "admin",
        "Store (or replace) the VM's reference configuration",
        Some("NewReferenceConfig"),
        "ReferenceConfigInfo",
    ),
    (
        "get",
        "/v1/vms/{vm}/reference-config",
        "admin, auditor, agent (own host)",
        "The VM's reference configuration",
        None,
        "ReferenceConfigInfo",
    ),
    (
        "post",
        "/v1/vms/{vm}/config/verify",
        "agent (own host), admin",
        "Check a signed measured configuration against the reference",
        Some("ConfigCheckRequest"),
        "ConfigCheckResult",
    ),
];

fn schema_ref(name: &str) -> Value {
    match name {
        "object" => json!({ "type": "object" }),
        "text" => json!({ "type": "string" }),
        "octet-stream" | "zstd" => json!({ "type": "string", "format": "binary" }),
        list if list.ends_with("List") => json!({
            "type": "array",
            "items": { "$ref": format!("#/components/schemas/{}", list.trim_end_matches("List")) }
        }),
        other => json!({ "$ref": format!("#/components/schemas/{other}") }),
    }
}

fn obj(props: &[(&str, &str)]) -> Value {
    let mut p = Map::new();
    for (name, ty) in props {
        let v = match *ty {
            "string" | "integer" | "boolean" | "object" => json!({ "type": ty }),
            // RFC 3339 in UTC, as vmattest_api::time writes it.
            "time" => json!({ "type": "string", "format": "date-time" }),
            "string[]" => json!({ "type": "array", "items": { "type": "string" } }),
            "string?" => json!({ "type": ["string", "null"] }),
            "integer?" => json!({ "type": ["integer", "null"] }),
            "time?" => json!({ "type": ["string", "null"], "format": "date-time" }),
            "object[]" => json!({ "type": "array", "items": { "type": "object" } }),
            r => schema_ref(r),
        };
        p.insert((*name).to_string(), v);
    }
    json!({ "type": "object", "properties": p })
}

fn schemas() -> Value {
    json!({
        "ErrorBody": obj(&[("code", "string"), ("error", "string")]),
        "Health": obj(&[("status", "string"), ("version", "string"), ("database", "string")]),
        "EarKey": obj(&[("alg", "string"), ("kid", "string"), ("public_key_pem", "string"), ("jwk", "object")]),
        "NewToken": obj(&[("role", "string"), ("host", "string?")]),
        "TokenIssued": obj(&[("token", "string"), ("id", "string"), ("role", "string"), ("host", "string?")]),
        "TokenInfo": obj(&[("id", "string"), ("role", "string"), ("host", "string?"), ("created", "time")]),
        "NewHost": obj(&[("name", "string"), ("public_key_pem", "string"), ("tpm", "object"), ("group", "string?")]),
        "Host": obj(&[("name", "string"), ("key_id", "string"), ("tpm_backed", "boolean"), ("created", "time")]),
        "HostChallenge": obj(&[("host", "string"), ("nonce", "string"), ("expires", "time")]),
        "HostEvidence": obj(&[("nonce", "string"), ("attest", "string"), ("signature", "string"), ("pcrs", "object"), ("events", "object")]),
        "HostAttestation": obj(&[("id", "integer"), ("host", "string"), ("group", "string"), ("time", "time"), ("status", "string"), ("mismatches", "string[]"), ("ear", "string")]),
        "VmKey": obj(&[("secret", "string"), ("release_to", "string[]")]),
        "VmKeyInfo": obj(&[("vm", "string"), ("release_to", "string[]"), ("updated", "time")]),
        "KeyRelease": obj(&[("evidence", "object")]),
        "ReleasedKey": obj(&[("vm", "string"), ("host", "string"), ("id_object", "string"), ("encrypted_secret", "string"), ("nonce", "string"), ("ciphertext", "string"), ("attestation", "object")]),
        "HostPolicy": obj(&[("pcrs", "object"), ("events", "object")]),
        "HostPolicyEntry": obj(&[("group", "string"), ("policy", "object"), ("created", "time")]),
        "NewPolicy": obj(&[("toml", "string")]),
        "PolicyInfo": obj(&[("id", "string"), ("name", "string"), ("toml", "string")]),
        "NewVm": obj(&[("name", "string"), ("host", "string"), ("policy_id", "string"), ("approved_subsets", "string[]"), ("threshold", "integer"), ("webhook", "object"), ("on_alert", "string")]),
        "Vm": obj(&[("name", "string"), ("host", "string"), ("policy_id", "string"), ("approved_subsets", "string[]"), ("threshold", "integer"), ("on_alert", "string"), ("has_webhook", "boolean"), ("baseline", "object")]),
        "NewBaseline": obj(&[("policy_id", "string"), ("regions", "object"), ("provenance", "object")]),
        "VmPolicy": obj(&[("policy_id", "string"), ("approved_subsets", "string[]")]),
        "LocateRequest": obj(&[("region", "string"), ("digests", "string[]")]),
        "Located": obj(&[("region", "string"), ("pages", "object[]")]),
        "PagesRequest": obj(&[("region", "string"), ("pages", "object[]")]),
        "BaselineInfo": obj(&[("id", "integer"), ("policy_id", "string"), ("provenance", "object"), ("created", "time")]),
        "Challenge": obj(&[("vm", "string"), ("nonce", "string"), ("policy_id", "string"), ("policy_toml", "string"), ("subset", "string"), ("expires", "time")]),
        "AttestationResult": obj(&[("id", "integer"), ("vm", "string"), ("time", "time"), ("score", "integer"), ("status", "string"), ("trust_vector", "object"), ("regions", "object"), ("alert", "boolean"), ("rollback_seq", "integer?"), ("ear", "string")]),
        "Alert": obj(&[("id", "integer"), ("vm", "string"), ("cause", "string"), ("state", "string"), ("result_id", "integer"), ("time", "time"), ("count", "integer"), ("last_result_id", "integer"), ("last_time", "time"), ("score", "integer"), ("status", "string"), ("message", "string"), ("acknowledged_time", "time?"), ("acknowledged_by", "string?"), ("resolved_time", "time?"), ("webhook", "boolean"), ("webhook_delivered", "boolean"), ("webhook_attempts", "integer")]),
        "Jwks": obj(&[("keys", "object[]")]),
        "ReportReceipt": obj(&[("id", "integer"), ("vm", "string"), ("seq", "integer"), ("verdict", "string"), ("request_id", "integer?")]),
        "NewSnapshotRequest": obj(&[("seq", "integer")]),
        "SnapshotRequest": obj(&[("id", "integer"), ("vm", "string"), ("seq", "integer"), ("nonce", "string"), ("requested", "time"), ("report_id", "integer?")]),
        "NewReferenceConfig": obj(&[("toml", "string")]),
        "ReferenceConfigInfo": obj(&[("vm", "string"), ("toml", "string"), ("created", "time")]),
        "ConfigCheckRequest": obj(&[("opening", "string"), ("statement", "string")]),
        "ConfigMismatch": obj(&[("name", "string"), ("expected", "string"), ("found", "string")]),
        "ConfigCheckResult": obj(&[("vm", "string"), ("root", "string"), ("ok", "boolean"), ("mismatches", "ConfigMismatchList"), ("result", "string")]),
        "Report": obj(&[("id", "integer"), ("vm", "string"), ("seq", "integer"), ("verdict", "string"), ("time", "time"), ("report", "string")]),
    })
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, roles, summary, body, resp) in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(summary));
        op.insert("description".into(), json!(format!("Roles: {roles}.")));
        if *roles != "public" {
            op.insert("security".into(), json!([{ "bearer": [] }]));
        }
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), json!(params));
        }
        if let Some(b) = body {
            let media = match *b {
                "octet-stream" => "application/octet-stream",
                "zstd" => "application/zstd",
                _ => "application/json",
            };
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { media: { "schema": schema_ref(b) } } }),
            );
        }
        let media = if *resp == "text" {
            "text/plain"
        } else {
            "application/json"
        };
        let error = json!({ "description": "error", "content": { "application/json": { "schema": schema_ref("ErrorBody") } } });
        op.insert(
            "responses".into(),
            json!({ "200": { "description": "ok", "content": { media: { "schema": schema_ref(resp) } } }, "default": error }),
        );
        let entry = paths
            .entry((*path).to_string())
            .or_insert_with(|| json!({}));
        if let Some(m) = entry.as_object_mut() {
            m.insert((*method).to_string(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "vmattest attestation server", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        }
    })
}
