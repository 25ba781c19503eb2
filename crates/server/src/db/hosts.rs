//! Host attestation: hosts' attestation keys and groups, host policies by group, and every
//! appraisal of a host's quote.

use sqlx::Row;

use super::Db;
use crate::error::ServerError;

/// A host to register.
#[derive(Debug, Clone, Copy)]
pub struct NewHostRow<'a> {
    pub name: &'a str,
    pub pem: &'a str,
    pub key_id: &'a str,
    /// The TPMT_PUBLIC of the attestation key that certified a TPM-resident host key.
    pub ak: Option<&'a [u8]>,
    /// The TPM's endorsement key (uncompressed P-256), as registered with the AK.
    pub ek: Option<&'a [u8]>,
    pub group: &'a str,
}

/// A host's TPM keys and group.
#[derive(Debug, Clone)]
pub struct HostTpmRow {
    pub ak: Option<Vec<u8>>,
    pub ek: Option<Vec<u8>>,
    pub group: String,
}

/// A stored host appraisal.
#[derive(Debug, Clone)]
pub struct HostResultRow {
    pub id: i64,
    pub host: String,
    pub group: String,
    pub time: i64,
    pub status: String,
    /// JSON array of strings.
    pub mismatches: String,
    pub ear: String,
}

impl Db {
    /// A host's TPM keys (none when registered without a TPM) and group.
    pub async fn host_tpm(&self, host: &str) -> Result<Option<HostTpmRow>, ServerError> {
        let row = sqlx::query("SELECT ak, ek, host_group FROM hosts WHERE name = $1")
            .bind(host.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(HostTpmRow {
                ak: r.try_get(0)?,
                ek: r.try_get(1)?,
                group: r.try_get(2)?,
            }),
            None => None,
        })
    }

    /// Creates or replaces a group's policy (JSON).
    pub async fn put_host_policy(
        &self,
        group: &str,
        body: &str,
        now: i64,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO host_policies (host_group, body, created) VALUES ($1, $2, $3) \
             ON CONFLICT (host_group) DO UPDATE SET body = excluded.body, created = excluded.created",
        )
        .bind(group.to_string())
        .bind(body.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every group's policy, or one group's: (group, JSON, created).
    pub async fn host_policies(
        &self,
        group: Option<&str>,
    ) -> Result<Vec<(String, String, i64)>, ServerError> {
        let rows = match group {
            Some(g) => sqlx::query(
                "SELECT host_group, body, created FROM host_policies WHERE host_group = $1",
            )
            .bind(g.to_string()),
            None => sqlx::query(
                "SELECT host_group, body, created FROM host_policies ORDER BY host_group",
            ),
        }
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// False when the group had no policy.
    pub async fn delete_host_policy(&self, group: &str) -> Result<bool, ServerError> {
        let r = sqlx::query("DELETE FROM host_policies WHERE host_group = $1")
            .bind(group.to_string())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Spends `nonce` and stores the appraisal in one transaction: `None` (nothing stored)
    /// when the nonce was spent before.
    pub async fn store_host_result(
        &self,
        nonce: &[u8],
        expires: i64,
        row: &HostResultRow,
    ) -> Result<Option<i64>, ServerError> {
        let mut tx = self.pool.begin().await?;
        let spent = sqlx::query(
            "INSERT INTO used_nonces (nonce, vm, expires) VALUES ($1, $2, $3) \
             ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce.to_vec())
        .bind(format!("host:{}", row.host))
        .bind(expires)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if spent != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let r = sqlx::query(
            "INSERT INTO host_results (host, host_group, time, status, mismatches, ear) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(row.host.clone())
        .bind(row.group.clone())
        .bind(row.time)
        .bind(row.status.clone())
        .bind(row.mismatches.clone())
        .bind(row.ear.clone())
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = r.try_get(0)?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// A host's appraisals, newest first.
    pub async fn host_results(
        &self,
        host: &str,
        limit: i64,
    ) -> Result<Vec<HostResultRow>, ServerError> {
        let rows = sqlx::query(
            "SELECT id, host, host_group, time, status, mismatches, ear FROM host_results \
             WHERE host = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(host.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HostResultRow {
                    id: r.try_get(0)?,
                    host: r.try_get(1)?,
                    group: r.try_get(2)?,
                    time: r.try_get(3)?,
                    status: r.try_get(4)?,
                    mismatches: r.try_get(5)?,
                    ear: r.try_get(6)?,
                })
            })
            .collect()
    }
}
