//! Shared state: database, batch writer, EAR signer, settings, and read-through caches of
//! tokens and per-VM appraisal inputs (host key, policy, baseline).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, RwLock};
use vmattest_api::{AlertAction, Provenance, Role};
use vmattest_core::alg::{Digest, HashAlg, PageIndex};
use vmattest_core::attest::evidence::MAX_REPORT_SITES;
use vmattest_core::attest::patch::{CALL_SITE_LEN, SiteTable};
use vmattest_core::attest::{GuestAddr, PatchSite, Policy, SiteKind, region_digest};
use vmattest_core::wire::{Reader, Writer as WireWriter};
use vmattest_sign::PublicKey;

use crate::auth::Caller;
use crate::db::{Db, VmRow, Writer};
use crate::earkeys::EarKeys;
use crate::error::{ApiError, ServerError};
use crate::metrics::Metrics;
use crate::nonce::NonceKey;
use crate::secrets::SecretsKey;

/// How long a cached VM entry is trusted before it is reloaded: instances sharing one
/// PostgreSQL see each other's registrations within this time.
const VM_CACHE_TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Settings {
    /// Evidence time must be within this many seconds of the server's clock.
    pub window_secs: i64,
    pub nonce_ttl_secs: i64,
    pub webhook_attempts: i64,
    pub webhook_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            window_secs: 60,
            nonce_ttl_secs: 120,
            webhook_attempts: 6,
            webhook_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
pub struct Baseline {
    pub id: i64,
    pub policy_id: String,
    pub provenance: Provenance,
    pub created: i64,
    /// Page digests per region name, in address order.
    pub pages: HashMap<String, Vec<Digest>>,
    /// Region digests over every page, for regions that are not sampled and for kernel code.
    pub full: HashMap<String, Digest>,
    /// Patch sites of the policy's regions, sorted and grouped; zeroed in the page digests.
    pub sites: SiteTable,
    /// [`SiteReport::fingerprint`] of the last report of every site that passed: a kernel
    /// seldom patches, so most evidence repeats it and its sites need not be rebuilt.
    passed: std::sync::Mutex<Option<Digest>>,
}

#[derive(Debug)]
pub struct VmEntry {
    pub row: VmRow,
    pub host_key: PublicKey,
    pub tpm_backed: bool,
    pub policy: Policy,
    /// Hex of `policy.id()`, computed once.
    pub policy_id: String,
    pub policy_toml: String,
    pub on_alert: AlertAction,
    pub baseline: Option<Baseline>,
}

#[derive(Debug)]
pub struct Inner {
    pub db: Db,
    pub writer: Writer,
    pub ear: EarKeys,
    pub nonces: NonceKey,
    /// Seals webhook secrets in the database.
    pub secrets: SecretsKey,
    pub settings: Settings,
    pub metrics: Metrics,
    pub webhook_wake: Notify,
    /// Callers by token hash, kept for [`VM_CACHE_TTL`] so that a token revoked through another
    /// server sharing the database stops within that time (at once through this one).
    tokens: RwLock<HashMap<[u8; 32], (Instant, Caller)>>,
    vms: RwLock<HashMap<String, (Instant, Arc<VmEntry>)>>,
}

#[derive(Clone, Debug)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl AppState {
    pub async fn new(
        db: Db,
        ear: EarKeys,
        nonces: NonceKey,
        secrets: SecretsKey,
        settings: Settings,
    ) -> Result<AppState, ServerError> {
        let writer = Writer::spawn(&db).await?;
        Ok(AppState(Arc::new(Inner {
            db,
            writer,
            ear,
            nonces,
            secrets,
            settings,
            metrics: Metrics::default(),
            webhook_wake: Notify::new(),
            tokens: RwLock::new(HashMap::new()),
            vms: RwLock::new(HashMap::new()),
        })))
    }

    /// Tokens never change once issued, so a hit is cached for the process's life.
    pub async fn caller(&self, hash: &[u8; 32]) -> Result<Option<Caller>, ServerError> {
        if let Some((at, c)) = self.tokens.read().await.get(hash)
            && at.elapsed() < VM_CACHE_TTL
        {
            return Ok(Some(c.clone()));
        }
        let Some((role, host)) = self.db.find_token(hash).await? else {
            self.tokens.write().await.remove(hash);
            return Ok(None);
        };
        let role = Role::parse(&role)
            .ok_or_else(|| ServerError::Corrupt(format!("token role {role:?}")))?;
        let caller = Caller { role, host };
        self.tokens
            .write()
            .await
            .insert(*hash, (Instant::now(), caller.clone()));
        Ok(Some(caller))
    }

    pub async fn forget_token(&self, hash: &[u8]) {
        self.tokens
            .write()
            .await
            .retain(|h, _| h.as_slice() != hash);
    }

    pub async fn forget_vm(&self, name: &str) {
        self.vms.write().await.remove(name);
    }

    pub async fn vm(&self, name: &str) -> Result<Arc<VmEntry>, ApiError> {
        if let Some((at, e)) = self.vms.read().await.get(name)
            && at.elapsed() < VM_CACHE_TTL
        {
            return Ok(e.clone());
        }
        let entry = self.load_vm(name).await?;
        // The last site report that passed outlives a reload of the same baseline: agents
        // may be naming it in evidence already.
        if let Some((_, old)) = self.vms.read().await.get(name)
            && let (Some(was), Some(now)) = (&old.baseline, &entry.baseline)
            && was.id == now.id
            && old.policy_id == entry.policy_id
            && let Some(print) = was.last_passed()
        {
            now.set_passed(print);
        }
        let entry = Arc::new(entry);
        self.vms
            .write()
            .await
            .insert(name.to_string(), (Instant::now(), entry.clone()));
        Ok(entry)
    }

    /// Registered policy `id`, parsed.
    pub async fn policy(&self, id: &str) -> Result<Policy, ApiError> {
        let (_, toml) = self
            .db
            .policy(id)
            .await?
            .ok_or_else(|| ApiError::not_found("policy", id))?;
        Policy::parse(&toml, None)
            .map_err(|e| ServerError::Corrupt(format!("policy {id}: {e}")).into())
    }

    async fn load_vm(&self, name: &str) -> Result<VmEntry, ApiError> {
        let row = self
            .db
            .vm(name)
            .await?
            .ok_or_else(|| ApiError::not_found("VM", name))?;
        let host = self.db.hosts(Some(&row.host)).await?.pop().ok_or_else(|| {
            ServerError::Corrupt(format!("VM {name} names unknown host {}", row.host))
        })?;
        let host_key = PublicKey::from_pem(&host.public_key_pem)
            .map_err(|e| ServerError::Corrupt(format!("host {} key: {e}", host.name)))?;
        let (_, policy_toml) = self
            .db
            .policy(&row.policy_id)
            .await?
            .ok_or_else(|| ServerError::Corrupt(format!("VM {name} names unknown policy")))?;
        let policy = Policy::parse(&policy_toml, None)
            .map_err(|e| ServerError::Corrupt(format!("policy {}: {e}", row.policy_id)))?;
        let baseline = match self.db.latest_baseline(name, &row.policy_id).await? {
            Some(b) => Some(decode_baseline(&policy, b)?),
            None => None,
        };
        let on_alert = match row.on_alert.as_str() {
            "rollback" => AlertAction::Rollback,
            _ => AlertAction::None,
        };
        Ok(VmEntry {
            row,
            host_key,
            tpm_backed: host.tpm_backed,
            policy_id: policy.id().to_hex(),
            policy,
            policy_toml,
            on_alert,
            baseline,
        })
    }
}

/// Baseline page digests: per region of the policy, in policy order, its digests; then, when
/// there are any, the patch sites (`u32 count, (u64 addr, u8 len, u64 target)*`).
pub fn encode_pages(
    policy: &Policy,
    pages: &HashMap<String, Vec<Digest>>,
    sites: &[PatchSite],
) -> Vec<u8> {
    let mut w = WireWriter::new();
    w.u8(policy.alg.id())
        .u32(u32::try_from(policy.regions.len()).unwrap_or(u32::MAX));
    for r in &policy.regions {
        let list = pages.get(&r.name).map(Vec::as_slice).unwrap_or(&[]);
        w.bytes(r.name.as_bytes())
            .u32(u32::try_from(list.len()).unwrap_or(u32::MAX));
        for d in list {
            w.raw(d.as_bytes());
        }
    }
    if !sites.is_empty() {
        w.u32(u32::try_from(sites.len()).unwrap_or(u32::MAX));
        for s in sites {
            // A jump label's length (2 or 5), or 0x80 | kind for a static-call site.
            let b = match s.kind {
                SiteKind::Label => s.len,
                k => 0x80 | k.id(),
            };
            w.u64(s.addr.0).u8(b).u64(s.target.0);
        }
    }
    w.finish()
}

pub(crate) fn decode_baseline(
    policy: &Policy,
    row: crate::db::BaselineRow,
) -> Result<Baseline, ServerError> {
    let corrupt = |what: String| ServerError::Corrupt(format!("baseline {}: {what}", row.id));
    let mut r = Reader::new(&row.pages);
    let alg = r
        .u8("alg")
        .ok()
        .and_then(HashAlg::from_id)
        .ok_or_else(|| corrupt("hash algorithm".into()))?;
    let n = r.u32("regions").map_err(|e| corrupt(e.to_string()))?;
    let mut pages = HashMap::new();
    for _ in 0..n {
        let name = r
            .string("region", 256)
            .map_err(|e| corrupt(e.to_string()))?
            .to_string();
        let count = r.u32("pages").map_err(|e| corrupt(e.to_string()))?;
        let mut list = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let b = r
                .take("digest", alg.digest_len())
                .map_err(|e| corrupt(e.to_string()))?;
            list.push(Digest::new(alg, b).ok_or_else(|| corrupt("digest".into()))?);
        }
        pages.insert(name, list);
    }
    let mut full = HashMap::new();
    for region in &policy.regions {
        if let Some(list) = pages.get(&region.name) {
            let entries: Vec<(PageIndex, Digest)> = list
                .iter()
                .enumerate()
                .map(|(i, d)| (PageIndex(i as u64), *d))
                .collect();
            full.insert(
                region.name.clone(),
                region_digest(alg, &region.name, &entries),
            );
        }
    }
    let mut sites = Vec::new();
    if r.remaining() > 0 {
        let n = r
            .len32("patch sites", MAX_REPORT_SITES)
            .map_err(|e| corrupt(e.to_string()))?;
        for _ in 0..n {
            let site = (|| {
                let addr = GuestAddr(r.u64("site address")?);
                let b = r.u8("site length")?;
                let target = GuestAddr(r.u64("site target")?);
                Ok::<_, vmattest_core::wire::WireError>(match b {
                    0x81..=0x83 => PatchSite {
                        addr,
                        len: CALL_SITE_LEN,
                        target,
                        kind: SiteKind::from_id(b & 0x7f).unwrap_or(SiteKind::Trampoline),
                    },
                    len => PatchSite {
                        addr,
                        len,
                        target,
                        kind: SiteKind::Label,
                    },
                })
            })()
            .map_err(|e| corrupt(e.to_string()))?;
            sites.push(site);
        }
    }
    let provenance =
        from_stored(&row.provenance, "snapshot_time").map_err(|e| corrupt(e.to_string()))?;
    Ok(Baseline {
        id: row.id,
        policy_id: row.policy_id,
        provenance,
        created: row.created,
        pages,
        full,
        sites: SiteTable::new(sites),
        passed: Default::default(),
    })
}

impl Baseline {
    /// The fingerprint of the last whole site report that passed.
    pub fn last_passed(&self) -> Option<Digest> {
        self.passed.lock().ok().and_then(|p| *p)
    }

    /// Whether `print` is [`Baseline::last_passed`].
    pub fn passed(&self, print: &Digest) -> bool {
        self.last_passed().is_some_and(|p| p.ct_eq(print))
    }

    pub fn set_passed(&self, print: Digest) {
        if let Ok(mut p) = self.passed.lock() {
            *p = Some(print);
        }
    }
}

/// Decodes an API object stored as JSON in a row (a result's body, a baseline's provenance).
/// Rows written before API times became RFC 3339 strings hold `time_field` as integer
/// seconds; those are rewritten first, so old and new rows decode alike.
pub(crate) fn from_stored<T: serde::de::DeserializeOwned>(
    json: &str,
    time_field: &str,
) -> serde_json::Result<T> {
    serde_json::from_str(json).or_else(|first| {
        let mut v: serde_json::Value = serde_json::from_str(json)?;
        match v.get_mut(time_field) {
            Some(slot) if slot.is_u64() => {
                let secs = slot.as_i64().unwrap_or(0);
                *slot = vmattest_api::time::from_secs(secs).to_string().into();
                serde_json::from_value(v)
            }
            _ => Err(first),
        }
    })
}

#[cfg(test)]
mod stored_tests {
    #![allow(clippy::unwrap_used)]

    use vmattest_api::Provenance;

    use super::from_stored;

    /// A baseline stored by an earlier version, with integer seconds, still loads.
    #[test]
    fn integer_times_of_earlier_rows_still_decode() {
        let row = |time: &str| {
            format!(
                r#"{{"store_vm_id":"v","seq":1,"link_digest":"aa","state_root":"bb","signer_key_ids":[],"snapshot_time":{time},"component":"ram"}}"#
            )
        };
        let old: Provenance = from_stored(&row("1796554501"), "snapshot_time").unwrap();
        let new: Provenance =
            from_stored(&row("\"2026-12-06T10:55:01Z\""), "snapshot_time").unwrap();
        assert_eq!(old, new);
        assert_eq!(new.snapshot_time.to_string(), "2026-12-06T10:55:01Z");
        assert!(from_stored::<Provenance>(&row("\"yesterday\""), "snapshot_time").is_err());
    }
}
