//! Tenant activity and wakes: when each tenant was last used, and the wake the controller has
//! yet to finish.
//!
//! Owns: the `tenant_activity` table. The gateway records activity in batches
//! ([`Store::record_activity`]: one write for every tenant used since its last flush, never one
//! per request); a wake ([`Store::wake`]) sets the last activity to now, remembers when and by
//! what it was asked for, and queues the tenant, in one transaction.
//!
//! Must not: decide whether a tenant sleeps (the controller's plan does, from these facts).

use std::collections::HashMap;

use pug_types::TenantId;
use sqlx::Row;

use crate::{Store, StoreError};

/// Rows per statement of a batch (keeps well under both dialects' bind limits).
const BATCH_ROWS: usize = 200;

/// What the store knows of a tenant's use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// Milliseconds since the Unix epoch; `None`: never used (the tenant's creation counts).
    pub last_activity_ms: Option<i64>,
    /// A wake asked for and not yet finished: when, and by what (`request`, `api`).
    pub wake: Option<(i64, String)>,
}

impl Store {
    /// Records that each tenant was used at the given time (ms since the epoch), in one
    /// transaction. A time older than the stored one is ignored.
    pub async fn record_activity(&self, used: &[(TenantId, i64)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for chunk in used.chunks(BATCH_ROWS) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                .collect();
            let sql = format!(
                "INSERT INTO tenant_activity (tenant_id, last_activity_ms) VALUES {} \
                 ON CONFLICT (tenant_id) DO UPDATE SET last_activity_ms = \
                   CASE WHEN excluded.last_activity_ms > tenant_activity.last_activity_ms \
                        THEN excluded.last_activity_ms ELSE tenant_activity.last_activity_ms END",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (id, at) in chunk {
                q = q.bind(id.as_str()).bind(*at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Asks for `id` to wake: its last activity becomes `now_ms`, the wake is remembered (the
    /// first unfinished one's time is kept) and the tenant is queued at once. Returns false
    /// when there is no such tenant (nothing is written then).
    pub async fn wake(&self, id: &TenantId, by: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        // Write first (see `update_spec`): the upsert only runs for an existing tenant.
        let done = sqlx::query(
            "INSERT INTO tenant_activity (tenant_id, last_activity_ms, wake_requested_ms, woken_by) \
             SELECT id, $2, $3, $4 FROM tenants WHERE id = $1 \
             ON CONFLICT (tenant_id) DO UPDATE SET \
               last_activity_ms = CASE WHEN excluded.last_activity_ms > tenant_activity.last_activity_ms \
                                       THEN excluded.last_activity_ms ELSE tenant_activity.last_activity_ms END, \
               wake_requested_ms = COALESCE(tenant_activity.wake_requested_ms, excluded.wake_requested_ms), \
               woken_by = COALESCE(tenant_activity.woken_by, excluded.woken_by)",
        )
        .bind(id.as_str())
        .bind(now_ms)
        .bind(now_ms)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        crate::queue::enqueue_in(&mut tx, id, now_ms, false).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// What the store knows of a tenant's use.
    pub async fn activity(&self, id: &TenantId) -> Result<Activity, StoreError> {
        let row = sqlx::query(
            "SELECT last_activity_ms, wake_requested_ms, woken_by FROM tenant_activity \
             WHERE tenant_id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Activity {
                last_activity_ms: None,
                wake: None,
            });
        };
        let requested: Option<i64> = row.try_get(1)?;
        let by: Option<String> = row.try_get(2)?;
        Ok(Activity {
            last_activity_ms: Some(row.try_get(0)?),
            wake: requested.map(|at| (at, by.unwrap_or_else(|| "request".into()))),
        })
    }

    /// Marks the wake asked for at `requested_ms` finished (a newer one is left alone).
    pub async fn finish_wake(&self, id: &TenantId, requested_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tenant_activity SET wake_requested_ms = NULL, woken_by = NULL \
             WHERE tenant_id = $1 AND wake_requested_ms = $2",
        )
        .bind(id.as_str())
        .bind(requested_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last activity of every tenant that has one.
    pub async fn last_activities(&self) -> Result<HashMap<TenantId, i64>, StoreError> {
        let rows = sqlx::query("SELECT tenant_id, last_activity_ms FROM tenant_activity")
            .fetch_all(&self.pool)
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            if let Ok(id) = TenantId::parse(&id) {
                out.insert(id, row.try_get(1)?);
            }
        }
        Ok(out)
    }
}
