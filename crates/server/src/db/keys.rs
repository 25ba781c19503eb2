//! VM keys held for attested release (sealed under the server's secrets key) and the record
//! of every release.

use sqlx::Row;

use super::Db;
use crate::error::ServerError;

impl Db {
    /// Creates or replaces a VM's held key; `release_to` is a JSON array of host names.
    pub async fn put_vm_key(
        &self,
        vm: &str,
        sealed: &[u8],
        release_to: &str,
        now: i64,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO vm_keys (vm, sealed, release_to, updated) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (vm) DO UPDATE SET sealed = excluded.sealed, \
             release_to = excluded.release_to, updated = excluded.updated",
        )
        .bind(vm.to_string())
        .bind(sealed.to_vec())
        .bind(release_to.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A VM's held key: (sealed, release_to JSON, updated).
    pub async fn vm_key(&self, vm: &str) -> Result<Option<(Vec<u8>, String, i64)>, ServerError> {
        let row = sqlx::query("SELECT sealed, release_to, updated FROM vm_keys WHERE vm = $1")
            .bind(vm.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        })
    }

    pub async fn record_key_release(
        &self,
        vm: &str,
        host: &str,
        now: i64,
        host_result: i64,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO key_releases (vm, host, time, host_result) VALUES ($1, $2, $3, $4)",
        )
        .bind(vm.to_string())
        .bind(host.to_string())
        .bind(now)
        .bind(host_result)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
