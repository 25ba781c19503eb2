//! Golden baselines (per VM and policy, newest first), the bytes of their regions, and the
//! detail the locating exchange adds to a result and to the alert that result raised.

use sqlx::Row;

use super::{BaselineRow, Db};
use crate::error::ServerError;

fn baseline_row(r: &sqlx::any::AnyRow) -> Result<BaselineRow, ServerError> {
    Ok(BaselineRow {
        id: r.try_get(0)?,
        policy_id: r.try_get(1)?,
        pages: r.try_get(2)?,
        provenance: r.try_get(3)?,
        created: r.try_get(4)?,
    })
}

impl Db {
    pub async fn insert_baseline(
        &self,
        vm: &str,
        policy_id: &str,
        pages: &[u8],
        provenance: &str,
        now: i64,
    ) -> Result<i64, ServerError> {
        let row = sqlx::query(
            "INSERT INTO baselines (vm, policy_id, pages, provenance, created) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(vm.to_string())
        .bind(policy_id.to_string())
        .bind(pages.to_vec())
        .bind(provenance.to_string())
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// The newest baseline of `vm` for `policy_id`: one staged for another policy waits.
    pub async fn latest_baseline(
        &self,
        vm: &str,
        policy_id: &str,
    ) -> Result<Option<BaselineRow>, ServerError> {
        let row = sqlx::query(
            "SELECT id, policy_id, pages, provenance, created FROM baselines \
             WHERE vm = $1 AND policy_id = $2 ORDER BY id DESC LIMIT 1",
        )
        .bind(vm.to_string())
        .bind(policy_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(baseline_row).transpose()
    }

    /// Baseline `id` if it is `vm`'s.
    pub async fn baseline(&self, vm: &str, id: i64) -> Result<Option<BaselineRow>, ServerError> {
        let row = sqlx::query(
            "SELECT id, policy_id, pages, provenance, created FROM baselines \
             WHERE vm = $1 AND id = $2",
        )
        .bind(vm.to_string())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(baseline_row).transpose()
    }

    /// Stores (or replaces) the zstd bytes of one region of baseline `baseline`.
    pub async fn put_baseline_bytes(
        &self,
        baseline: i64,
        region: &str,
        zstd: &[u8],
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO baseline_bytes (baseline, region, data) VALUES ($1, $2, $3) \
             ON CONFLICT (baseline, region) DO UPDATE SET data = excluded.data",
        )
        .bind(baseline)
        .bind(region.to_string())
        .bind(zstd.to_vec())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn baseline_bytes(
        &self,
        baseline: i64,
        region: &str,
    ) -> Result<Option<Vec<u8>>, ServerError> {
        let row =
            sqlx::query("SELECT data FROM baseline_bytes WHERE baseline = $1 AND region = $2")
                .bind(baseline)
                .bind(region.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    /// Replaces result `id`'s body and appends `more` to the message of the alert it raised,
    /// in one transaction.
    pub async fn locate_result(
        &self,
        id: i64,
        vm: &str,
        body: &str,
        more: &str,
    ) -> Result<(), ServerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE results SET body = $1 WHERE id = $2")
            .bind(body.to_string())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE alerts SET message = message || $1 WHERE vm = $2 AND result_id = $3")
            .bind(more.to_string())
            .bind(vm.to_string())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
