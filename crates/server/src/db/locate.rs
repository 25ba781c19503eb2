//! Rows of the locating exchange: a baseline's region bytes, and the detail it adds to a
//! result and to the alert that result raised.

use sqlx::Row;

use super::Db;
use crate::error::ServerError;

impl Db {
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
