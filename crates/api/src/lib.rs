//! JSON bodies of the attestation server's HTTP API (docs/API.md), shared by the server, the
//! agent and the command-line client. Digests, nonces and signed objects travel as lowercase
//! hex; keys as PEM. Evidence and snapshot reports are posted as their canonical bytes
//! (`application/octet-stream`), never re-encoded. Times are RFC 3339 strings in UTC
//! ([`time`]).

use serde::{Deserialize, Serialize};
use vmattest_core::record::UnixTime;

mod error;
pub mod host;
mod text;
pub mod time;

pub use error::ErrorCode;

pub const API_PREFIX: &str = "/v1";
/// Largest request body the server reads.
pub const MAX_BODY_BYTES: usize = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Registers hosts, VMs, policies and baselines; issues tokens.
    Admin,
    /// Submits evidence and reports for the VMs of its own host.
    Agent,
    /// Reads results, alerts and reports.
    Auditor,
}

impl Role {
    /// The name used on the wire, in the database and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        [Role::Admin, Role::Agent, Role::Auditor]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// Every error response: a stable machine-readable code and a one-line message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub database: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewToken {
    pub role: Role,
    /// The host an agent token acts for (required for agents, refused otherwise).
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenIssued {
    pub token: String,
    /// The token's public id, for listing and revoking it.
    #[serde(default)]
    pub id: String,
    pub role: Role,
    pub host: Option<String>,
}

/// A token as the server lists it: its id, never the token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The first 8 bytes of the token's SHA-256, in hex.
    pub id: String,
    pub role: Role,
    pub host: Option<String>,
    #[serde(with = "time")]
    pub created: UnixTime,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewHost {
    pub name: String,
    /// The agent's evidence-signing public key (SPKI PEM).
    pub public_key_pem: String,
    /// Set when the key is TPM-resident and certified by the host's attestation key.
    #[serde(default)]
    pub tpm: Option<TpmBinding>,
    /// The host group whose host policy appraises the host's quotes [default: `default`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TpmBinding {
    /// The host TPM's attestation key: its TPMT_PUBLIC, hex (as `tpm ak` writes it).
    pub ak: String,
    /// The certification `tpm keygen` wrote beside the public key.
    pub certify: CertifyDoc,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub key_id: String,
    pub tpm_backed: bool,
    #[serde(with = "time")]
    pub created: UnixTime,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewPolicy {
    /// A resolved policy (ranges only), as `vmattest policy resolve` prints it.
    pub toml: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub id: String,
    pub name: String,
    pub toml: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertAction {
    #[default]
    None,
    /// The agent rolls the VM back to the snapshot its golden baseline came from.
    Rollback,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// HMAC-SHA256 key for the `X-Vmattest-Signature` header; at least 16 bytes.
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewVm {
    pub name: String,
    pub host: String,
    pub policy_id: String,
    pub approved_subsets: Vec<String>,
    /// Scores below this raise an alert (0-100).
    pub threshold: u8,
    #[serde(default)]
    pub webhook: Option<Webhook>,
    #[serde(default)]
    pub on_alert: AlertAction,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub host: String,
    pub policy_id: String,
    pub approved_subsets: Vec<String>,
    pub threshold: u8,
    pub on_alert: AlertAction,
    pub has_webhook: bool,
    pub baseline: Option<BaselineInfo>,
}

/// Moves a registered VM to another registered policy; its approved subsets stay unless given.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmPolicy {
    pub policy_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_subsets: Option<Vec<String>>,
}

/// Where a golden baseline came from: a verified snapshot link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub store_vm_id: String,
    pub seq: u64,
    pub link_digest: String,
    pub state_root: String,
    pub signer_key_ids: Vec<String>,
    #[serde(with = "time")]
    pub snapshot_time: UnixTime,
    pub component: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionPages {
    pub name: String,
    /// One hex page digest per page of the region, in address order.
    pub pages: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewBaseline {
    pub policy_id: String,
    pub regions: Vec<RegionPages>,
    /// Jump-label sites of the policy's regions as `[address, length, target]`, from the
    /// snapshot's own jump table; their bytes are zeroed in the page digests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patch_sites: Vec<(u64, u8, u64)>,
    /// Static-call sites as `[address, kind, key]`: kind 1 an inline call, 2 an inline tail
    /// call (key: the static call's key), 3 a trampoline (key 0); each 5 bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub call_sites: Vec<(u64, u8, u64)>,
    pub provenance: Provenance,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BaselineInfo {
    pub id: i64,
    pub policy_id: String,
    pub provenance: Provenance,
    #[serde(with = "time")]
    pub created: UnixTime,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Challenge {
    pub vm: String,
    pub nonce: String,
    pub policy_id: String,
    /// The resolved policy, so that the agent needs nothing else.
    pub policy_toml: String,
    pub subset: String,
    #[serde(with = "time")]
    pub expires: UnixTime,
    /// Hex fingerprint of the last whole patch-site report of the VM that passed; evidence
    /// whose report is the same may name it by this fingerprint instead of carrying it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_report: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionResult {
    pub name: String,
    pub matched: bool,
    pub weight: u32,
    pub critical: bool,
    /// Why it did not match, where the server can tell (a patch site's page and offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An agent's digests of every page of one region (hex, in page order), read after a result
/// that did not match it; the server answers with the pages that differ from the baseline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocateRequest {
    pub region: String,
    pub digests: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Located {
    pub region: String,
    /// At most 16, relative to the region's start.
    pub pages: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PageBytes {
    pub index: u64,
    /// The page's bytes in hex, as read now.
    pub data: String,
}

/// The bytes of pages a [`Located`] named; the server answers with the result, its region's
/// detail naming each differing byte run by page and offset.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PagesRequest {
    pub region: String,
    pub pages: Vec<PageBytes>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestationResult {
    pub id: i64,
    pub vm: String,
    #[serde(with = "time")]
    pub time: UnixTime,
    pub score: u8,
    pub status: String,
    /// AR4SI claims by their EAR names.
    pub trust_vector: std::collections::BTreeMap<String, i8>,
    pub regions: Vec<RegionResult>,
    pub alert: bool,
    /// Set when the VM's alert action asks the agent to roll back, to this seq.
    pub rollback_seq: Option<u64>,
    /// The EAR, a JWT signed by the server's key (see `GET /v1/ear-key`).
    pub ear: String,
}

/// One alert per VM and cause while it is active: later results with the same cause raise its
/// `count` instead of adding alerts. A result at or above the threshold resolves it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Alert {
    pub id: i64,
    pub vm: String,
    /// What failed, for example the regions that differ; equal causes share one alert.
    pub cause: String,
    /// `open`, `acknowledged` or `resolved`.
    pub state: AlertState,
    /// The result that opened it, and when.
    pub result_id: i64,
    #[serde(with = "time")]
    pub time: UnixTime,
    /// Results counted in it so far; the last one's id, time, score, status and message.
    pub count: u64,
    pub last_result_id: i64,
    #[serde(with = "time")]
    pub last_time: UnixTime,
    pub score: u8,
    pub status: String,
    pub message: String,
    #[serde(with = "time::opt")]
    pub acknowledged_time: Option<UnixTime>,
    /// Who acknowledged it: the token's role and host, if any.
    pub acknowledged_by: Option<String>,
    #[serde(with = "time::opt")]
    pub resolved_time: Option<UnixTime>,
    /// Whether the VM had a webhook when the alert opened; only then is delivery tracked.
    pub webhook: bool,
    pub webhook_delivered: bool,
    pub webhook_attempts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Open,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EarKey {
    /// JOSE algorithm name (EdDSA or ES384).
    pub alg: String,
    pub kid: String,
    /// SPKI PEM of the key that signs EARs and webhooks.
    pub public_key_pem: String,
    pub jwk: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportReceipt {
    pub id: i64,
    pub vm: String,
    pub seq: u64,
    pub verdict: String,
    /// The snapshot request this report answers, if its nonce was one.
    pub request_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewSnapshotRequest {
    /// The seq of the VM's chain whose state the running VM is compared with.
    pub seq: u64,
}

/// A request for the agent to compare its running VM with an attested snapshot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub id: i64,
    pub vm: String,
    pub seq: u64,
    /// The server's nonce, which the signed report must carry (hex).
    pub nonce: String,
    #[serde(with = "time")]
    pub requested: UnixTime,
    /// The stored report that answered it.
    pub report_id: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredReport {
    pub id: i64,
    pub vm: String,
    pub seq: u64,
    pub verdict: String,
    #[serde(with = "time")]
    pub time: UnixTime,
    /// The signed report's canonical bytes, hex.
    pub report: String,
}

pub const CERTIFY_FORMAT: &str = "vmattest-tpm-certify/1";

/// The certification of a TPM signing key, as `tpm keygen` writes it: hex fields.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyDoc {
    pub format: String,
    /// The certified key's TPMT_PUBLIC.
    pub key: String,
    /// TPMS_ATTEST of TPM2_Certify.
    pub attest: String,
    /// The attestation key's ECDSA P-256 r || s.
    pub signature: String,
    pub nonce: String,
    /// The TPM's endorsement key (ECC P-256, SEC1), recorded for the verifier's inventory.
    pub ek: String,
    /// The manufacturer's EK certificate (DER), when the TPM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<String>,
}

impl CertifyDoc {
    /// The hex fields decoded: `(key, attest, signature, nonce)`; an error names the field.
    pub fn decode(&self) -> Result<[Vec<u8>; 4], String> {
        if self.format != CERTIFY_FORMAT {
            return Err(format!(
                "format {:?}, expected {CERTIFY_FORMAT:?}",
                self.format
            ));
        }
        let field = |name: &str, v: &str| hex::decode(v).map_err(|_| format!("{name} is not hex"));
        Ok([
            field("key", &self.key)?,
            field("attest", &self.attest)?,
            field("signature", &self.signature)?,
            field("nonce", &self.nonce)?,
        ])
    }
}

/// A VM's reference configuration (TOML, docs/CONFIG.md): exact values, numeric ranges and
/// allowed sets per parameter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewReferenceConfig {
    pub toml: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReferenceConfigInfo {
    pub vm: String,
    pub toml: String,
    #[serde(with = "time")]
    pub created: UnixTime,
}

/// A measured configuration to check before launch: the opening (every parameter with its
/// salt) and the signed statement of its root, both hex of their canonical encodings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigCheckRequest {
    pub opening: String,
    pub statement: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMismatch {
    pub name: String,
    /// What the reference allows, e.g. `= 1024`, `1 to 4`, `one of [q35, pc]`, `absent`.
    pub expected: String,
    /// The measured value, or `absent`.
    pub found: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigCheckResult {
    pub vm: String,
    /// The config root the statement signs (hex).
    pub root: String,
    pub ok: bool,
    pub mismatches: Vec<ConfigMismatch>,
    /// The verdict as a JWT signed by the server's EAR key.
    pub result: String,
}
