//! Host attestation: a host's TPM quotes its boot PCRs and the vmattest PCR, with that PCR's
//! event log, over a server nonce; the server appraises the quote against the host policy of
//! the host's group and answers with a signed host EAR.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use vmattest_core::record::UnixTime;

use crate::time;

/// Most events a quote carries.
pub const MAX_EVENTS: usize = 1024;
/// Longest event kind or value.
pub const MAX_EVENT_TEXT: usize = 4096;
/// The group of a host registered without one.
pub const DEFAULT_GROUP: &str = "default";

/// One measurement: `digest = SHA-256("vmattest event v1\0" || kind || "\0" || value)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub pcr: u32,
    pub kind: String,
    pub value: String,
    pub digest: String,
}

impl Event {
    pub fn new(pcr: u32, kind: &str, value: String) -> Event {
        let digest = hex::encode(event_digest(kind, &value));
        Event {
            pcr,
            kind: kind.into(),
            value,
            digest,
        }
    }
}

pub fn event_digest(kind: &str, value: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"vmattest event v1\0");
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(value.as_bytes());
    h.finalize().into()
}

/// An event whose digest is not the digest of its kind and value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("event {kind} {value:?}: its digest is not the digest of its kind and value")]
pub struct BadEventDigest {
    pub kind: String,
    pub value: String,
}

/// The value a SHA-256 PCR reaches from zeros after extending with `events` of that PCR;
/// refuses an event whose digest is not that of its kind and value.
pub fn replay(events: &[Event], pcr: u32) -> Result<[u8; 32], BadEventDigest> {
    let mut v = [0u8; 32];
    for e in events.iter().filter(|e| e.pcr == pcr) {
        let d = event_digest(&e.kind, &e.value);
        if !hex::decode(&e.digest).is_ok_and(|x| x == d) {
            return Err(BadEventDigest {
                kind: e.kind.clone(),
                value: e.value.clone(),
            });
        }
        let mut h = Sha256::new();
        h.update(v);
        h.update(d);
        v = h.finalize().into();
    }
    Ok(v)
}

/// `PUT /v1/host-policies/{group}`: what every host of a group must show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPolicy {
    /// Golden SHA-256 values (hex) by PCR index; each must be quoted and equal.
    pub pcrs: BTreeMap<u32, String>,
    /// Events the replayed event log must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventRule>,
}

/// An event a host policy requires: this kind and value, measured into this PCR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    pub pcr: u32,
    pub kind: String,
    pub value: String,
}

/// A stored host policy (`GET /v1/host-policies`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostPolicyEntry {
    pub group: String,
    pub policy: HostPolicy,
    #[serde(with = "time")]
    pub created: UnixTime,
}

/// `POST /v1/hosts/{host}/challenge`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostChallenge {
    pub host: String,
    /// Hex; the quote's qualifying data.
    pub nonce: String,
    #[serde(with = "time")]
    pub expires: UnixTime,
}

/// A PCR's SHA-256 value as quoted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrValue {
    pub index: u32,
    pub sha256: String,
}

/// `POST /v1/hosts/{host}/attest`: a quote by the host's registered attestation key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEvidence {
    /// The challenge's nonce, hex.
    pub nonce: String,
    /// TPMS_ATTEST, hex.
    pub attest: String,
    /// ECDSA P-256 `r || s`, hex.
    pub signature: String,
    /// The quoted PCRs, ascending.
    pub pcrs: Vec<PcrValue>,
    /// The event log of the quoted PCRs that have one.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// `PUT /v1/vms/{vm}/key`: a VM chain's secret for the server to hold (sealed) and release to
/// the named hosts, each only while its quote satisfies its host policy.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmKey {
    /// Hex, 16 to 64 bytes.
    pub secret: String,
    /// Hosts the key may be released to besides the VM's own.
    #[serde(default)]
    pub release_to: Vec<String>,
}

impl std::fmt::Debug for VmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmKey")
            .field("release_to", &self.release_to)
            .finish_non_exhaustive()
    }
}

/// A held key, without the key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmKeyInfo {
    pub vm: String,
    pub release_to: Vec<String>,
    #[serde(with = "time")]
    pub updated: UnixTime,
}

/// `POST /v1/vms/{vm}/key/release`: the caller's host asks for the key with a fresh quote.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRelease {
    pub evidence: HostEvidence,
}

/// The key, for the destination's TPM only: `TPM2_ActivateCredential` with its EK and
/// attestation key recovers the 32-byte key that opens `ciphertext` (ChaCha20-Poly1305 with
/// `nonce`, associated data `"vmattest key release v1\0" || vm || "\0" || host`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleasedKey {
    pub vm: String,
    pub host: String,
    /// `TPM2B_ID_OBJECT` contents, hex.
    pub id_object: String,
    /// `TPM2B_ENCRYPTED_SECRET` contents, hex.
    pub encrypted_secret: String,
    pub nonce: String,
    pub ciphertext: String,
    /// The appraisal that allowed the release.
    pub attestation: HostAttestation,
}

/// Associated data of a released key's ciphertext.
pub fn release_aad(vm: &str, host: &str) -> Vec<u8> {
    let mut aad = b"vmattest key release v1\0".to_vec();
    aad.extend_from_slice(vm.as_bytes());
    aad.push(0);
    aad.extend_from_slice(host.as_bytes());
    aad
}

/// A host's appraisal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostAttestation {
    pub id: i64,
    pub host: String,
    pub group: String,
    #[serde(with = "time")]
    pub time: UnixTime,
    /// `affirming` or `contraindicated` (`warning` without a policy for the group).
    pub status: String,
    /// What differs from the policy, one line each ("PCR 4: ... , the policy wants ...").
    pub mismatches: Vec<String>,
    /// The host EAR (JWT), signed by the server's EAR key.
    pub ear: String,
}

impl std::fmt::Display for HostAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {} ({}) {} at {}",
            self.host, self.group, self.status, self.time
        )?;
        for m in &self.mismatches {
            write!(f, "; {m}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for HostPolicyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pcrs: Vec<String> = self.policy.pcrs.keys().map(u32::to_string).collect();
        write!(
            f,
            "{}  PCRs {}  {} events",
            self.group,
            pcrs.join(","),
            self.policy.events.len()
        )
    }
}
