//! The durable work queue: one row per tenant that needs a reconcile.
//!
//! A row is a promise that the tenant will be reconciled at or after `due_at_ms`; it survives a
//! crash. Enqueueing an already queued tenant only brings its due time forward (deduplication).
//! `seq` grows on every enqueue, so a worker that finishes an item removes it only if nobody
//! enqueued the tenant again while it worked. Handing rows out to several pug processes at once
//! (leases, fencing tokens) is `lease.rs`; finishing and requeueing here are conditional on the
//! item's fencing token, so a pug that lost a row's lease can no longer change it.

use pug_types::TenantId;
use sqlx::Row;

use crate::{now_ms, Kind, Store, StoreError};

/// A queued reconcile, as handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub tenant: TenantId,
    /// How many times in a row this tenant's reconcile failed (drives the backoff).
    pub attempts: u32,
    /// The row's sequence number when it was handed out.
    pub seq: i64,
    /// The fencing token of the lease it was handed out under (its row's token when it was
    /// only read, as by [`Store::due_work`]).
    pub fence: i64,
}

/// Queues `id`. A spec change (`new_spec`) also forgets earlier failures: they were failures
/// of the old spec, and must not count towards the new one's crash-loop threshold.
pub(crate) async fn enqueue_in(
    conn: &mut sqlx::AnyConnection,
    id: &TenantId,
    due_at_ms: i64,
    new_spec: bool,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO work_queue (tenant_id, due_at_ms, attempts, seq) VALUES ($1, $2, 0, 1) \
         ON CONFLICT (tenant_id) DO UPDATE SET \
           due_at_ms = CASE WHEN excluded.due_at_ms < work_queue.due_at_ms \
                            THEN excluded.due_at_ms ELSE work_queue.due_at_ms END, \
           attempts = CASE WHEN $3 > 0 THEN 0 ELSE work_queue.attempts END, \
           seq = work_queue.seq + 1",
    )
    .bind(id.as_str())
    .bind(due_at_ms)
    .bind(new_spec as i64)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// Queues a reconcile of `id` no later than `due_at_ms`.
    pub async fn enqueue(&self, id: &TenantId, due_at_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        enqueue_in(&mut conn, id, due_at_ms, false).await
    }

    /// Queues a reconcile of every tenant (a full resync), their due times spread evenly over
    /// `spread` from now in the order of their ids (zero: all now). Spread, a periodic resync
    /// of a large fleet is a steady trickle of passes instead of a burst of every tenant at
    /// once, which held up requests and real work (bench/wake/scale.py: 10,000 tenants queued
    /// every 30 s took 1.2–1.5 of 2 cores for 4–6 s). A tenant already due sooner keeps its time.
    /// Without `sleeping`, tenants whose stored phase is `sleeping` are left out: most of a
    /// large fleet sleeps, has nothing running to look at, and is queued anyway by anything
    /// that changes it (a request, a wake, a spec change).
    pub async fn enqueue_all(
        &self,
        spread: std::time::Duration,
        sleeping: bool,
    ) -> Result<(), StoreError> {
        let phase = match self.kind {
            Kind::Sqlite => "json_extract(s.status, '$.phase')",
            Kind::Postgres => "(s.status::json ->> 'phase')",
        };
        let which = if sleeping {
            String::new()
        } else {
            format!(" AND (s.status IS NULL OR {phase} <> 'sleeping')")
        };
        let sql = format!(
            "INSERT INTO work_queue (tenant_id, due_at_ms, attempts, seq) \
             SELECT t.id, $1 + (ROW_NUMBER() OVER (ORDER BY t.id) - 1) * $2 / COUNT(*) OVER (), 0, 1 \
             FROM tenants t LEFT JOIN tenant_status s ON s.tenant_id = t.id WHERE true{which} \
             ON CONFLICT (tenant_id) DO UPDATE SET \
               due_at_ms = CASE WHEN excluded.due_at_ms < work_queue.due_at_ms \
                                THEN excluded.due_at_ms ELSE work_queue.due_at_ms END, \
               seq = work_queue.seq + 1"
        );
        sqlx::query(&sql)
            .bind(now_ms())
            .bind(i64::try_from(spread.as_millis()).unwrap_or(i64::MAX / 2))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Up to `limit` items due by `now_ms`, earliest first, skipping tenants in `busy`. Reads
    /// only: the queue loop claims work with [`Store::claim_work`].
    pub async fn due_work(
        &self,
        now_ms: i64,
        limit: usize,
        busy: &std::collections::HashSet<TenantId>,
    ) -> Result<Vec<WorkItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant_id, attempts, seq, fence FROM work_queue WHERE due_at_ms <= $1 \
             ORDER BY due_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind((limit + busy.len()) as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut items = Vec::new();
        for row in rows {
            let id: String = row.try_get(0)?;
            let Ok(tenant) = TenantId::parse(&id) else {
                continue;
            };
            if busy.contains(&tenant) {
                continue;
            }
            let attempts: i64 = row.try_get(1)?;
            items.push(WorkItem {
                tenant,
                attempts: attempts as u32,
                seq: row.try_get(2)?,
                fence: row.try_get(3)?,
            });
            if items.len() == limit {
                break;
            }
        }
        Ok(items)
    }

    /// The earliest due time in the queue.
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar("SELECT MIN(due_at_ms) FROM work_queue")
            .fetch_one(&self.pool)
            .await?;
        Ok(next)
    }

    /// Removes a finished item, unless the tenant was queued again meanwhile (then only its
    /// lease is given back). Returns false when the item's lease was lost (another pug holds
    /// the row now): nothing was changed.
    pub async fn finish_work(&self, item: &WorkItem) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM work_queue WHERE tenant_id = $1 AND seq = $2 AND fence = $3")
                .bind(item.tenant.as_str())
                .bind(item.seq)
                .bind(item.fence)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        self.release_work(item).await
    }

    /// Puts an item back, due at `due_at_ms`, with its failure count, and gives its lease
    /// back. If the tenant was queued again meanwhile, that newer request wins and only the
    /// lease is given back. Returns false when the item's lease was lost: nothing was changed.
    pub async fn requeue_work(
        &self,
        item: &WorkItem,
        due_at_ms: i64,
        attempts: u32,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE work_queue SET due_at_ms = $1, attempts = $2, owner = NULL, \
             lease_until_ms = 0 WHERE tenant_id = $3 AND seq = $4 AND fence = $5",
        )
        .bind(due_at_ms)
        .bind(attempts as i64)
        .bind(item.tenant.as_str())
        .bind(item.seq)
        .bind(item.fence)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(true);
        }
        self.release_work(item).await
    }

    /// Gives back the lease `item` was handed out under, if it still holds it.
    pub async fn release_work(&self, item: &WorkItem) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE work_queue SET owner = NULL, lease_until_ms = 0 \
             WHERE tenant_id = $1 AND fence = $2",
        )
        .bind(item.tenant.as_str())
        .bind(item.fence)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// How many tenants wait for a reconcile.
    pub async fn queue_depth(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM work_queue")
            .fetch_one(&self.pool)
            .await?)
    }
}
