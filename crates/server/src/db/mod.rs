//! Storage over sqlx's `Any` driver: SQLite in a file (the default) or PostgreSQL by URL.
//!
//! Queries use `$N` placeholders and only BIGINT, TEXT and BLOB/BYTEA columns, which both
//! backends read the same way. Each backend has its own versioned migrations.

mod baselines;
mod exec;
mod hosts;
mod keys;
mod writer;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

pub use writer::{AlertDraft, AlertRef, EvidenceCommit, NonceOutcome, Writer};

use crate::error::ServerError;
pub use hosts::{HostResultRow, HostTpmRow, NewHostRow};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// The URL it was opened with, for the writer's own connection.
    url: String,
}

/// A URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The database file of a `sqlite:` URL; `None` for PostgreSQL and in-memory databases.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path.starts_with(':') || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

impl Db {
    /// Opens the database and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Db, ServerError> {
        let db = Db::open(url, None).await?;
        match db.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&db.pool).await?,
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&db.pool)
                    .await?
            }
        }
        Ok(db)
    }

    /// A pool of `connections` (default: per backend) on the same database, no migrations.
    pub async fn open(url: &str, connections: Option<u32>) -> Result<Db, ServerError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(ServerError::DbUrl(redact(url)));
        };
        let connect_err = |source| ServerError::Connect {
            url: redact(url),
            source: Box::new(source),
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let opts = sqlx::any::AnyConnectOptions::from_str(&url).map_err(connect_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(connections.unwrap_or(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 8,
            }))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL makes every
                        // acknowledged commit durable.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        // Freed space is zeroed, so that a replaced plaintext secret does not
                        // linger in the file.
                        conn.execute("PRAGMA secure_delete = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(connect_err)?;
        Ok(Db {
            pool,
            backend,
            url: url.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn count_tokens(&self) -> Result<i64, ServerError> {
        let row = sqlx::query("SELECT COUNT(*) FROM tokens")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn insert_token(
        &self,
        hash: &[u8],
        role: &str,
        host: Option<&str>,
        now: i64,
    ) -> Result<(), ServerError> {
        sqlx::query("INSERT INTO tokens (hash, role, host, created) VALUES ($1, $2, $3, $4)")
            .bind(hash.to_vec())
            .bind(role.to_string())
            .bind(host.map(str::to_string))
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every token as (hash, role, host, created), oldest first.
    pub async fn tokens(&self) -> Result<Vec<(Vec<u8>, String, Option<String>, i64)>, ServerError> {
        let rows =
            sqlx::query("SELECT hash, role, host, created FROM tokens ORDER BY created, hash")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }

    pub async fn delete_token(&self, hash: &[u8]) -> Result<(), ServerError> {
        sqlx::query("DELETE FROM tokens WHERE hash = $1")
            .bind(hash.to_vec())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn find_token(
        &self,
        hash: &[u8],
    ) -> Result<Option<(String, Option<String>)>, ServerError> {
        let row = sqlx::query("SELECT role, host FROM tokens WHERE hash = $1")
            .bind(hash.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    /// Inserts a row; false when the primary key already exists. `ak`: the attestation key of
    /// a TPM-backed host.
    pub async fn insert_host(&self, host: &NewHostRow<'_>, now: i64) -> Result<bool, ServerError> {
        let r = sqlx::query(
            "INSERT INTO hosts (name, public_key_pem, key_id, tpm_backed, created, ak, ek, host_group) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING",
        )
        .bind(host.name.to_string())
        .bind(host.pem.to_string())
        .bind(host.key_id.to_string())
        .bind(i64::from(host.ak.is_some()))
        .bind(now)
        .bind(host.ak.map(<[u8]>::to_vec))
        .bind(host.ek.map(<[u8]>::to_vec))
        .bind(host.group.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn hosts(&self, name: Option<&str>) -> Result<Vec<HostRow>, ServerError> {
        let rows = match name {
            Some(n) => sqlx::query(
                "SELECT name, public_key_pem, key_id, tpm_backed, created FROM hosts WHERE name = $1",
            )
            .bind(n.to_string()),
            None => sqlx::query(
                "SELECT name, public_key_pem, key_id, tpm_backed, created FROM hosts ORDER BY name",
            ),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HostRow {
                    name: r.try_get(0)?,
                    public_key_pem: r.try_get(1)?,
                    key_id: r.try_get(2)?,
                    tpm_backed: r.try_get::<i64, _>(3)? != 0,
                    created: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn insert_policy(
        &self,
        id: &str,
        name: &str,
        toml: &str,
        now: i64,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO policies (id, name, toml, created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(name.to_string())
        .bind(toml.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn policy(&self, id: &str) -> Result<Option<(String, String)>, ServerError> {
        let row = sqlx::query("SELECT name, toml FROM policies WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    pub async fn insert_vm(&self, vm: &VmRow, now: i64) -> Result<bool, ServerError> {
        let r = sqlx::query(
            "INSERT INTO vms (name, host, policy_id, subsets, threshold, on_alert, webhook_url, \
             webhook_secret_sealed, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(vm.name.clone())
        .bind(vm.host.clone())
        .bind(vm.policy_id.clone())
        .bind(vm.subsets.join(","))
        .bind(i64::from(vm.threshold))
        .bind(vm.on_alert.clone())
        .bind(vm.webhook_url.clone())
        .bind(vm.webhook_secret.clone())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Moves VM `name` to policy `policy_id` with `subsets` approved.
    pub async fn set_vm_policy(
        &self,
        name: &str,
        policy_id: &str,
        subsets: &[String],
    ) -> Result<(), ServerError> {
        sqlx::query("UPDATE vms SET policy_id = $1, subsets = $2 WHERE name = $3")
            .bind(policy_id.to_string())
            .bind(subsets.join(","))
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn vm(&self, name: &str) -> Result<Option<VmRow>, ServerError> {
        let row = sqlx::query(
            "SELECT name, host, policy_id, subsets, threshold, on_alert, webhook_url, \
             webhook_secret_sealed FROM vms WHERE name = $1",
        )
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let subsets: String = r.try_get(3)?;
        Ok(Some(VmRow {
            name: r.try_get(0)?,
            host: r.try_get(1)?,
            policy_id: r.try_get(2)?,
            subsets: subsets
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            threshold: u8::try_from(r.try_get::<i64, _>(4)?).unwrap_or(100),
            on_alert: r.try_get(5)?,
            webhook_url: r.try_get(6)?,
            webhook_secret: r.try_get(7)?,
        }))
    }

    /// Forgets used nonces that expired before `before`: their expiry refuses them anyway.
    pub async fn purge_nonces(&self, before: i64) -> Result<u64, ServerError> {
        let r = sqlx::query("DELETE FROM used_nonces WHERE expires < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn result(&self, id: i64) -> Result<Option<String>, ServerError> {
        let row = sqlx::query("SELECT body FROM results WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    pub async fn results(&self, vm: &str, limit: i64) -> Result<Vec<(i64, String)>, ServerError> {
        let rows =
            sqlx::query("SELECT id, body FROM results WHERE vm = $1 ORDER BY id DESC LIMIT $2")
                .bind(vm.to_string())
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn alerts(
        &self,
        vm: Option<&str>,
        resolved: bool,
        limit: i64,
    ) -> Result<Vec<AlertRow>, ServerError> {
        // An empty name matches every VM.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1 = '' OR vm = $1) \
             AND ($2 = 1 OR resolved_time IS NULL) ORDER BY id DESC LIMIT $3",
        )))
        .bind(vm.unwrap_or("").to_string())
        .bind(i64::from(resolved))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert_row).collect()
    }

    /// Alerts whose webhook is due: undelivered, below the attempt cap, time reached.
    pub async fn due_alerts(
        &self,
        now: i64,
        max_attempts: i64,
    ) -> Result<Vec<AlertRow>, ServerError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE delivered = 0 AND attempts < $1 \
             AND next_attempt <= $2 ORDER BY id LIMIT 100",
        )))
        .bind(max_attempts)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alert_row).collect()
    }

    /// Marks an active alert acknowledged; returns it, or None when there is no such alert.
    /// Acknowledging twice keeps the first time and name.
    pub async fn ack_alert(
        &self,
        id: i64,
        by: &str,
        now: i64,
    ) -> Result<Option<AlertRow>, ServerError> {
        sqlx::query(
            "UPDATE alerts SET acknowledged_time = $1, acknowledged_by = $2 \
             WHERE id = $3 AND acknowledged_time IS NULL",
        )
        .bind(now)
        .bind(by.to_string())
        .bind(id)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(alert_row).transpose()
    }

    /// Active alerts per VM: (VM, unacknowledged, acknowledged).
    pub async fn active_alerts(&self) -> Result<Vec<(String, i64, i64)>, ServerError> {
        let rows = sqlx::query(
            "SELECT vm, SUM(CASE WHEN acknowledged_time IS NULL THEN 1 ELSE 0 END), \
             SUM(CASE WHEN acknowledged_time IS NULL THEN 0 ELSE 1 END) FROM alerts \
             WHERE resolved_time IS NULL GROUP BY vm",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    pub async fn mark_alert(
        &self,
        id: i64,
        delivered: bool,
        attempts: i64,
        next_attempt: i64,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "UPDATE alerts SET delivered = $1, attempts = $2, next_attempt = $3 WHERE id = $4",
        )
        .bind(i64::from(delivered))
        .bind(attempts)
        .bind(next_attempt)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn reports(&self, vm: &str) -> Result<Vec<ReportRow>, ServerError> {
        let rows = sqlx::query(
            "SELECT id, seq, verdict, time, report FROM reports WHERE vm = $1 ORDER BY id DESC LIMIT 1000",
        )
        .bind(vm.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReportRow {
                    id: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    verdict: r.try_get(2)?,
                    time: r.try_get(3)?,
                    report: r.try_get(4)?,
                })
            })
            .collect()
    }
}

impl Db {
    pub async fn insert_snapshot_request(
        &self,
        vm: &str,
        seq: u64,
        nonce: &[u8],
        now: i64,
    ) -> Result<i64, ServerError> {
        let row = sqlx::query(
            "INSERT INTO snapshot_requests (vm, seq, nonce, requested) VALUES ($1, $2, $3, $4) \
             RETURNING id",
        )
        .bind(vm.to_string())
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(nonce.to_vec())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Requests of `vm`, newest first; only unanswered ones when `pending`.
    pub async fn snapshot_requests(
        &self,
        vm: &str,
        pending: bool,
    ) -> Result<Vec<SnapshotRequestRow>, ServerError> {
        let rows = sqlx::query(
            "SELECT id, seq, nonce, requested, report_id FROM snapshot_requests WHERE vm = $1 \
             AND ($2 = 0 OR report_id IS NULL) ORDER BY id DESC LIMIT 100",
        )
        .bind(vm.to_string())
        .bind(i64::from(pending))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(request_row).collect()
    }

    /// Stores (or replaces) the reference configuration of `vm`.
    pub async fn put_reference_config(
        &self,
        vm: &str,
        toml: &str,
        now: i64,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO reference_configs (vm, toml, created) VALUES ($1, $2, $3) \
             ON CONFLICT (vm) DO UPDATE SET toml = excluded.toml, created = excluded.created",
        )
        .bind(vm.to_string())
        .bind(toml.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The reference configuration of `vm` and when it was stored.
    pub async fn reference_config(&self, vm: &str) -> Result<Option<(String, i64)>, ServerError> {
        let row = sqlx::query("SELECT toml, created FROM reference_configs WHERE vm = $1")
            .bind(vm.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }
}

impl Db {
    /// Seals every webhook secret still stored in clear (rows written before schema v3) and
    /// clears the plaintext column; returns how many were sealed. On SQLite the WAL is then
    /// checkpointed and truncated, so that with `secure_delete` no copy of the plaintext stays
    /// in the files.
    pub async fn seal_plaintext_secrets(
        &self,
        key: &crate::secrets::SecretsKey,
    ) -> Result<u64, ServerError> {
        let rows = sqlx::query(
            "SELECT name, webhook_secret FROM vms WHERE webhook_secret IS NOT NULL ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut sealed = 0;
        for r in &rows {
            let name: String = r.try_get(0)?;
            let secret = zeroize::Zeroizing::new(r.try_get::<String, _>(1)?);
            let blob = key.seal(&name, secret.as_bytes())?;
            sealed += sqlx::query(
                "UPDATE vms SET webhook_secret_sealed = $1, webhook_secret = NULL \
                 WHERE name = $2 AND webhook_secret IS NOT NULL",
            )
            .bind(blob)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        if sealed > 0 && self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        Ok(sealed)
    }

    /// Up to 1000 newest snapshot requests of `vm`, answered or not, with their nonces: the
    /// candidates a posted report's nonce is compared with.
    pub async fn snapshot_request_nonces(
        &self,
        vm: &str,
    ) -> Result<Vec<SnapshotRequestRow>, ServerError> {
        let rows = sqlx::query(
            "SELECT id, seq, nonce, requested, report_id FROM snapshot_requests WHERE vm = $1 \
             ORDER BY id DESC LIMIT 1000",
        )
        .bind(vm.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(request_row).collect()
    }

    /// Stores a report as the answer to request `request_id`, in one transaction: `None` (and
    /// nothing stored) when the request was answered meanwhile.
    pub async fn store_answer(
        &self,
        request_id: i64,
        report: &NewReportRow<'_>,
    ) -> Result<Option<i64>, ServerError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO reports (vm, seq, verdict, time, report) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(report.vm.to_string())
        .bind(report.seq)
        .bind(report.verdict.to_string())
        .bind(report.time)
        .bind(report.report.to_vec())
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get(0)?;
        let answered = sqlx::query(
            "UPDATE snapshot_requests SET report_id = $1 WHERE id = $2 AND report_id IS NULL",
        )
        .bind(id)
        .bind(request_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if answered != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(id))
    }
}

/// A report to store: what [`Db::store_answer`] inserts.
#[derive(Clone, Debug)]
pub struct NewReportRow<'a> {
    pub vm: &'a str,
    pub seq: i64,
    pub verdict: &'a str,
    pub time: i64,
    pub report: &'a [u8],
}

#[derive(Clone, Debug)]
pub struct SnapshotRequestRow {
    pub id: i64,
    pub seq: i64,
    pub nonce: Vec<u8>,
    pub requested: i64,
    pub report_id: Option<i64>,
}

/// A row of `SELECT id, seq, nonce, requested, report_id FROM snapshot_requests`.
fn request_row(r: &sqlx::any::AnyRow) -> Result<SnapshotRequestRow, ServerError> {
    Ok(SnapshotRequestRow {
        id: r.try_get(0)?,
        seq: r.try_get(1)?,
        nonce: r.try_get(2)?,
        requested: r.try_get(3)?,
        report_id: r.try_get(4)?,
    })
}

const ALERT_COLUMNS: &str = "id, vm, result_id, time, score, status, message, delivered, \
    attempts, next_attempt, cause, count, last_time, last_result_id, acknowledged_time, \
    acknowledged_by, resolved_time, webhook";

fn alert_row(r: &sqlx::any::AnyRow) -> Result<AlertRow, ServerError> {
    Ok(AlertRow {
        id: r.try_get(0)?,
        vm: r.try_get(1)?,
        result_id: r.try_get(2)?,
        time: r.try_get(3)?,
        score: r.try_get(4)?,
        status: r.try_get(5)?,
        message: r.try_get(6)?,
        delivered: r.try_get::<i64, _>(7)? != 0,
        attempts: r.try_get(8)?,
        next_attempt: r.try_get(9)?,
        cause: r.try_get(10)?,
        count: r.try_get(11)?,
        last_time: r.try_get(12)?,
        last_result_id: r.try_get(13)?,
        acknowledged_time: r.try_get(14)?,
        acknowledged_by: r.try_get(15)?,
        resolved_time: r.try_get(16)?,
        webhook: r.try_get::<i64, _>(17)? != 0,
    })
}

#[derive(Clone, Debug)]
pub struct HostRow {
    pub name: String,
    pub public_key_pem: String,
    pub key_id: String,
    pub tpm_backed: bool,
    pub created: i64,
}

#[derive(Clone, Debug)]
pub struct VmRow {
    pub name: String,
    pub host: String,
    pub policy_id: String,
    pub subsets: Vec<String>,
    pub threshold: u8,
    pub on_alert: String,
    pub webhook_url: Option<String>,
    /// Sealed under the server's secrets key (crate::secrets).
    pub webhook_secret: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct BaselineRow {
    pub id: i64,
    pub policy_id: String,
    pub pages: Vec<u8>,
    pub provenance: String,
    pub created: i64,
}

#[derive(Clone, Debug)]
pub struct AlertRow {
    pub id: i64,
    pub vm: String,
    pub result_id: i64,
    pub time: i64,
    pub score: i64,
    pub status: String,
    pub message: String,
    pub delivered: bool,
    pub attempts: i64,
    pub next_attempt: i64,
    pub cause: String,
    pub count: i64,
    pub last_time: i64,
    pub last_result_id: i64,
    pub acknowledged_time: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub resolved_time: Option<i64>,
    pub webhook: bool,
}

#[derive(Clone, Debug)]
pub struct ReportRow {
    pub id: i64,
    pub seq: i64,
    pub verdict: String,
    pub time: i64,
    pub report: Vec<u8>,
}
