//! A blocking client for the attestation server's HTTP API (docs/API.md): every admin,
//! auditor and agent call, used by the command line, the agent and other front ends.
//!
//! [`Client::connect`] builds one from what a front end is given: a server URL, a token file
//! and a CA certificate file.

mod connect;

pub use connect::{Connect, ConnectError};

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use vmattest_api::host::{
    HostAttestation, HostChallenge, HostEvidence, HostPolicy, HostPolicyEntry, KeyRelease,
    ReleasedKey, VmKey, VmKeyInfo,
};
use vmattest_api::{
    API_PREFIX, Alert, AttestationResult, BaselineInfo, Challenge, ConfigCheckRequest,
    ConfigCheckResult, EarKey, ErrorBody, ErrorCode, Health, Host, LocateRequest, Located,
    NewBaseline, NewHost, NewPolicy, NewReferenceConfig, NewSnapshotRequest, NewToken, NewVm,
    PagesRequest, PolicyInfo, ReferenceConfigInfo, ReportReceipt, SnapshotRequest, StoredReport,
    TokenInfo, TokenIssued, Vm, VmPolicy,
};
use vmattest_core::class::{Classify, ErrorClass};

/// Largest response body read.
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server refused ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
    #[error("{url}: response: {detail}")]
    Decode { url: String, detail: String },
    #[error("{what} {value:?}: expected 1-64 of [A-Za-z0-9._-]")]
    BadName { what: &'static str, value: String },
    #[error("server URL {0:?}: expected http://HOST[:PORT] or https://HOST[:PORT]")]
    BadUrl(String),
    #[error("CA certificate: {0}")]
    Ca(String),
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl Classify for ClientError {
    fn class(&self) -> ErrorClass {
        match self {
            // A code this build does not know is classified by its HTTP status.
            ClientError::Refused {
                status,
                code: ErrorCode::Other(_),
                ..
            } => match status {
                401 | 403 => ErrorClass::Denied,
                408 | 500.. => ErrorClass::Environment,
                _ => ErrorClass::Input,
            },
            ClientError::Refused { code, .. } => code.class(),
            ClientError::Transport { .. } | ClientError::Decode { .. } => ErrorClass::Environment,
            ClientError::BadName { .. } | ClientError::BadUrl(_) | ClientError::Ca(_) => {
                ErrorClass::Input
            }
        }
    }
}

/// A connection to one server, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

fn config() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .user_agent(concat!("vmattest/", env!("CARGO_PKG_VERSION")))
}

/// A path segment: a VM or host name, or a policy id.
fn seg<'a>(what: &'static str, value: &'a str) -> Result<&'a str, ClientError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && value != "."
        && value != "..";
    if ok {
        Ok(value)
    } else {
        Err(ClientError::BadName {
            what,
            value: value.to_owned(),
        })
    }
}

impl Client {
    /// A client for the server at `base` (`http://host:port` or `https://...`), trusting the
    /// web PKI roots for TLS.
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::build(base, token, config().build())
    }

    /// Like [`Client::new`], trusting only the CA certificates in `ca_pem` for TLS.
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        ca_pem: &[u8],
    ) -> Result<Client, ClientError> {
        let certs = ureq::tls::parse_pem(ca_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(ClientError::Ca(e.to_string()))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(ClientError::Ca("no CERTIFICATE in the PEM file".into()));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        Client::build(base, token, config().tls_config(tls).build())
    }

    fn build(
        base: &str,
        token: Option<String>,
        config: ureq::config::Config,
    ) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| ClientError::BadUrl(base.to_owned()))?;
        if rest.is_empty() || rest.contains(['?', '#', ' ']) {
            return Err(ClientError::BadUrl(base.to_owned()));
        }
        Ok(Client {
            base: base.to_owned(),
            token,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        // Prometheus and JWT clients use conventional paths, outside the versioned API.
        if path == "/metrics" || path.starts_with("/.well-known/") {
            format!("{}{path}", self.base)
        } else {
            format!("{}{API_PREFIX}{path}", self.base)
        }
    }

    /// Sends one request; `body` is `(content type, bytes)`.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = self.url(path);
        let transport = |e: ureq::Error| ClientError::Transport {
            url: url.clone(),
            detail: e.to_string(),
        };
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = if method == "GET" || method == "DELETE" {
            let mut req = if method == "GET" {
                self.agent.get(&url)
            } else {
                self.agent.delete(&url)
            }
            .header("Accept", "application/json");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        } else {
            let mut req = if method == "PUT" {
                self.agent.put(&url)
            } else {
                self.agent.post(&url)
            }
            .header("Accept", "application/json");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match body {
                Some((ct, bytes)) => req.header("Content-Type", ct).send(bytes),
                None => req.send_empty(),
            }
        }
        .map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(transport)?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => ClientError::Refused {
                status,
                code: e.code,
                message: one_line(&e.error),
            },
            // Not the server's error body (a proxy's page, say): the status says what it was.
            Err(_) => ClientError::Refused {
                status,
                code: ErrorCode::Other("http".into()),
                message: one_line(&String::from_utf8_lossy(&bytes[..bytes.len().min(200)])),
            },
        })
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            url: self.url(path),
            detail: e.to_string(),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.request("GET", path, None)?;
        self.decode(path, &bytes)
    }

    fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json("POST", path, body)
    }

    fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json("PUT", path, body)
    }

    fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: self.url(path),
            detail: format!("encoding the request: {e}"),
        })?;
        let bytes = self.request(method, path, Some(("application/json", &json)))?;
        self.decode(path, &bytes)
    }

    fn post_bytes<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ClientError> {
        let bytes = self.request("POST", path, Some(("application/octet-stream", body)))?;
        self.decode(path, &bytes)
    }

    pub fn health(&self) -> Result<Health, ClientError> {
        self.get("/health")
    }

    pub fn ear_key(&self) -> Result<EarKey, ClientError> {
        self.get("/ear-key")
    }

    /// The JWKS: the current EAR key and those it replaced.
    pub fn jwks(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/.well-known/jwks.json")
    }

    /// Replaces the EAR signing key (admin); `alg` is `ed25519` or `p384` (default: the
    /// current key's type). Returns the new key.
    pub fn rotate_ear_key(&self, alg: Option<&str>) -> Result<EarKey, ClientError> {
        let path = match alg {
            Some(a) => format!("/ear-key/rotate?alg={}", seg("alg", a)?),
            None => "/ear-key/rotate".to_owned(),
        };
        let bytes = self.request("POST", &path, None)?;
        self.decode(&path, &bytes)
    }

    /// The OpenAPI document, as JSON.
    pub fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/openapi.json")
    }

    /// Prometheus text.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let bytes = self.request("GET", "/metrics", None)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub fn create_token(&self, req: &NewToken) -> Result<TokenIssued, ClientError> {
        self.post_json("/tokens", req)
    }

    pub fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.get("/tokens")
    }

    /// Revokes the token with public id `id` (admin).
    pub fn revoke_token(&self, id: &str) -> Result<TokenInfo, ClientError> {
        let path = format!("/tokens/{}", seg("token id", id)?);
        let bytes = self.request("DELETE", &path, None)?;
        self.decode(&path, &bytes)
    }

    pub fn add_host(&self, req: &NewHost) -> Result<Host, ClientError> {
        self.post_json("/hosts", req)
    }

    pub fn hosts(&self) -> Result<Vec<Host>, ClientError> {
        self.get("/hosts")
    }

    /// A nonce for the host's next TPM quote.
    pub fn host_challenge(&self, host: &str) -> Result<HostChallenge, ClientError> {
        let path = format!("/hosts/{}/challenge", seg("host", host)?);
        let bytes = self.request("POST", &path, None)?;
        self.decode(&path, &bytes)
    }

    /// Sends the host's quote; the server's appraisal and host EAR.
    pub fn host_attest(
        &self,
        host: &str,
        evidence: &HostEvidence,
    ) -> Result<HostAttestation, ClientError> {
        self.post_json(&format!("/hosts/{}/attest", seg("host", host)?), evidence)
    }

    pub fn host_attestations(&self, host: &str) -> Result<Vec<HostAttestation>, ClientError> {
        self.get(&format!("/hosts/{}/attestations", seg("host", host)?))
    }

    /// Has the server hold a VM chain's secret for attested release.
    pub fn put_vm_key(&self, vm: &str, key: &VmKey) -> Result<VmKeyInfo, ClientError> {
        self.put_json(&format!("/vms/{}/key", seg("vm", vm)?), key)
    }

    /// Asks for a VM's key with a fresh quote of this host.
    pub fn release_key(&self, vm: &str, req: &KeyRelease) -> Result<ReleasedKey, ClientError> {
        self.post_json(&format!("/vms/{}/key/release", seg("vm", vm)?), req)
    }

    pub fn host_policies(&self) -> Result<Vec<HostPolicyEntry>, ClientError> {
        self.get("/host-policies")
    }

    pub fn put_host_policy(
        &self,
        group: &str,
        policy: &HostPolicy,
    ) -> Result<HostPolicyEntry, ClientError> {
        self.put_json(&format!("/host-policies/{}", seg("group", group)?), policy)
    }

    pub fn delete_host_policy(&self, group: &str) -> Result<(), ClientError> {
        let path = format!("/host-policies/{}", seg("group", group)?);
        self.request("DELETE", &path, None).map(drop)
    }

    pub fn add_policy(&self, req: &NewPolicy) -> Result<PolicyInfo, ClientError> {
        self.post_json("/policies", req)
    }

    pub fn policy(&self, id: &str) -> Result<PolicyInfo, ClientError> {
        self.get(&format!("/policies/{}", seg("policy id", id)?))
    }

    pub fn add_vm(&self, req: &NewVm) -> Result<Vm, ClientError> {
        self.post_json("/vms", req)
    }

    pub fn vm(&self, name: &str) -> Result<Vm, ClientError> {
        self.get(&format!("/vms/{}", seg("vm", name)?))
    }

    /// Moves a VM to another registered policy.
    pub fn set_vm_policy(&self, name: &str, req: &VmPolicy) -> Result<Vm, ClientError> {
        self.put_json(&format!("/vms/{}/policy", seg("vm", name)?), req)
    }

    pub fn set_baseline(&self, vm: &str, req: &NewBaseline) -> Result<BaselineInfo, ClientError> {
        self.post_json(&format!("/vms/{}/baseline", seg("vm", vm)?), req)
    }

    pub fn challenge(&self, vm: &str) -> Result<Challenge, ClientError> {
        let path = format!("/vms/{}/challenge", seg("vm", vm)?);
        let bytes = self.request("POST", &path, None)?;
        self.decode(&path, &bytes)
    }

    /// Posts signed evidence (its canonical bytes).
    pub fn evidence(&self, signed: &[u8]) -> Result<AttestationResult, ClientError> {
        self.post_bytes("/evidence", signed)
    }

    /// The bytes of one region of the VM's current baseline `id`, zstd-compressed.
    pub fn put_baseline_bytes(
        &self,
        vm: &str,
        id: i64,
        region: &str,
        zstd: &[u8],
    ) -> Result<BaselineInfo, ClientError> {
        let path = format!(
            "/vms/{}/baseline/{id}/bytes/{}",
            seg("vm", vm)?,
            seg("region", region)?
        );
        let bytes = self.request("PUT", &path, Some(("application/zstd", zstd)))?;
        self.decode(&path, &bytes)
    }

    /// Which pages of a region of result `id` differ from the baseline.
    pub fn locate(&self, id: i64, req: &LocateRequest) -> Result<Located, ClientError> {
        self.post_json(&format!("/results/{id}/locate"), req)
    }

    /// Names the differing bytes of pages of result `id`; returns the result with them.
    pub fn page_diff(&self, id: i64, req: &PagesRequest) -> Result<AttestationResult, ClientError> {
        self.post_json(&format!("/results/{id}/pages"), req)
    }

    /// Newest first; at most `limit` when given.
    pub fn results(
        &self,
        vm: &str,
        limit: Option<u32>,
    ) -> Result<Vec<AttestationResult>, ClientError> {
        let mut path = format!("/vms/{}/results", seg("vm", vm)?);
        if let Some(n) = limit {
            path.push_str(&format!("?limit={n}"));
        }
        self.get(&path)
    }

    pub fn result(&self, id: i64) -> Result<AttestationResult, ClientError> {
        self.get(&format!("/results/{id}"))
    }

    /// Newest first, of one VM or of all; active ones only unless `all`.
    pub fn alerts(&self, vm: Option<&str>, all: bool) -> Result<Vec<Alert>, ClientError> {
        let mut path = format!("/alerts?all={all}");
        if let Some(vm) = vm {
            path.push_str("&vm=");
            path.push_str(seg("vm", vm)?);
        }
        self.get(&path)
    }

    /// Acknowledges an alert (admin): it stays active, without new webhooks, until resolved.
    pub fn ack_alert(&self, id: i64) -> Result<Alert, ClientError> {
        let path = format!("/alerts/{id}/ack");
        let bytes = self.request("POST", &path, None)?;
        self.decode(&path, &bytes)
    }

    /// Posts a signed snapshot report (its canonical bytes).
    pub fn post_report(&self, vm: &str, signed: &[u8]) -> Result<ReportReceipt, ClientError> {
        self.post_bytes(&format!("/vms/{}/reports", seg("vm", vm)?), signed)
    }

    pub fn reports(&self, vm: &str) -> Result<Vec<StoredReport>, ClientError> {
        self.get(&format!("/vms/{}/reports", seg("vm", vm)?))
    }

    /// Asks the VM's agent to compare the running VM with snapshot `seq` (admin, auditor).
    pub fn request_snapshot(&self, vm: &str, seq: u64) -> Result<SnapshotRequest, ClientError> {
        self.post_json(
            &format!("/vms/{}/snapshot-requests", seg("vm", vm)?),
            &NewSnapshotRequest { seq },
        )
    }

    /// Stores (replacing any earlier one) the reference configuration of `vm` (admin).
    pub fn put_reference_config(
        &self,
        vm: &str,
        req: &NewReferenceConfig,
    ) -> Result<ReferenceConfigInfo, ClientError> {
        self.put_json(&format!("/vms/{}/reference-config", seg("vm", vm)?), req)
    }

    /// Asks the server to check a measured configuration of `vm` against its reference.
    pub fn verify_config(
        &self,
        vm: &str,
        req: &ConfigCheckRequest,
    ) -> Result<ConfigCheckResult, ClientError> {
        self.post_json(&format!("/vms/{}/config/verify", seg("vm", vm)?), req)
    }

    /// Snapshot requests of `vm`; an agent sees only the unanswered ones.
    pub fn snapshot_requests(&self, vm: &str) -> Result<Vec<SnapshotRequest>, ClientError> {
        self.get(&format!("/vms/{}/snapshot-requests", seg("vm", vm)?))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn urls_and_names() {
        let c = Client::new("http://127.0.0.1:8080/", None).unwrap();
        assert_eq!(c.url("/health"), "http://127.0.0.1:8080/v1/health");
        assert_eq!(c.url("/metrics"), "http://127.0.0.1:8080/metrics");
        assert!(Client::new("ftp://x", None).is_err());
        assert!(Client::new("http://", None).is_err());
        assert!(c.vm("../tokens").is_err());
        assert!(c.vm("a/b").is_err());
    }

    /// A one-shot HTTP server that answers every request with `status` and `body`.
    fn serve_once(status: u16, body: &'static str) -> String {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body_in = vec![0u8; len];
            reader.read_exact(&mut body_in).unwrap();
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        });
        format!("http://{addr}")
    }

    #[test]
    fn a_refusal_carries_status_and_code_on_one_line() {
        let url = serve_once(
            400,
            r#"{"code":"replayed_nonce","error":"nonce was\nalready used"}"#,
        );
        let c = Client::new(&url, Some("t".into())).unwrap();
        let e = c.evidence(b"xx").unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::ReplayedNonce));
        assert_eq!(e.class(), ErrorClass::Verification);
        assert_eq!(
            e.to_string(),
            "server refused (400 replayed_nonce): nonce was already used"
        );
    }

    #[test]
    fn a_success_decodes() {
        let url = serve_once(200, r#"{"status":"ok","version":"0.1.0","database":"ok"}"#);
        let h = Client::new(&url, None).unwrap().health().unwrap();
        assert_eq!(h.status, "ok");
    }
}
