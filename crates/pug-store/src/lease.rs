//! Leases: how several pug processes on one store share the controller's work without two of
//! them ever reconciling one tenant at once.
//!
//! Owns: claiming due work-queue rows under a lease ([`Store::claim_work`]), the heartbeat that
//! renews a pug's leases, keeps its `pug_replicas` row alive and holds the named `fleet` lease
//! of the one pug elected to run fleet-wide jobs ([`Store::heartbeat`]), giving everything back
//! at a clean stop ([`Store::retire`]) and listing the pugs alive on the store
//! ([`Store::live_replicas`]).
//!
//! A lease is a row's `owner`, `lease_until_ms` and `fence`. Times are the store's clock on
//! PostgreSQL (one clock for every pug, whatever their hosts' clocks say) and this process's on
//! SQLite (one pug). Every claim locks the `queue` row of `leases` first, so claims are
//! serialised: the count of live leases a claim sees is exact, which is how the global limit
//! on concurrent passes holds across replicas, and the `queue` row's counter issues fencing
//! tokens that only grow. On PostgreSQL the due rows are read `FOR UPDATE SKIP LOCKED`, so a
//! claim never waits on a row another pug is finishing.
//!
//! Must not: decide when to renew or what a lost lease means (the controller does), or compare
//! a lease with a local clock on PostgreSQL.

use pug_types::TenantId;
use sqlx::Row;

use crate::{now_ms, Kind, Store, StoreError, WorkItem};

/// A pug process as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Unique per process (host, pid and a random part): the owner of its leases.
    pub owner: String,
    pub host: String,
    /// `process`, `docker` or `swarm`.
    pub backend: String,
    /// The roles it runs, comma-separated.
    pub roles: String,
}

/// What one heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The work leases renewed, as (tenant, fencing token); a lease held before and missing
    /// here is lost.
    pub renewed: Vec<(TenantId, i64)>,
    /// The `fleet` lease's fencing token, when this pug holds it now.
    pub fleet: Option<i64>,
}

impl Store {
    /// The store's clock in milliseconds since the epoch: PostgreSQL's on PostgreSQL, so every
    /// pug compares leases with the same clock.
    async fn clock_ms(&self, conn: &mut sqlx::AnyConnection) -> Result<i64, StoreError> {
        Ok(match self.kind {
            Kind::Sqlite => now_ms(),
            Kind::Postgres => {
                sqlx::query_scalar(
                    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
                )
                .fetch_one(conn)
                .await?
            }
        })
    }

    /// Claims up to `limit` queue rows due by `due_by_ms` (this pug's clock, as enqueues use)
    /// whose lease is free, for `owner`, for `lease_ms`. Claims no more than keep the live leases
    /// of all pugs at or below `global_limit`. Each claimed item carries its fencing token.
    pub async fn claim_work(
        &self,
        owner: &str,
        due_by_ms: i64,
        limit: usize,
        global_limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<WorkItem>, StoreError> {
        let mut tx = self.begin_write().await?;
        // Locks the `queue` row: one claim at a time, on every pug.
        sqlx::query("UPDATE leases SET fence = fence WHERE name = 'queue'")
            .execute(&mut *tx)
            .await?;
        let now = self.clock_ms(&mut tx).await?;
        let live: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM work_queue WHERE lease_until_ms > $1")
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
        let room = (global_limit as i64 - live).clamp(0, limit as i64);
        if room == 0 {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let lock = match self.kind {
            Kind::Sqlite => "",
            Kind::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let rows = sqlx::query(&format!(
            "SELECT tenant_id, attempts, seq FROM work_queue \
             WHERE due_at_ms <= $1 AND lease_until_ms <= $2 ORDER BY due_at_ms LIMIT $3{lock}"
        ))
        .bind(due_by_ms)
        .bind(now)
        .bind(room)
        .fetch_all(&mut *tx)
        .await?;
        let mut due = Vec::new();
        for row in rows {
            let id: String = row.try_get(0)?;
            // A row no pug can parse stays where it is, unleased.
            let Ok(tenant) = TenantId::parse(&id) else {
                continue;
            };
            let attempts: i64 = row.try_get(1)?;
            due.push((tenant, attempts as u32, row.try_get::<i64, _>(2)?));
        }
        if due.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let top: i64 = sqlx::query_scalar(
            "UPDATE leases SET fence = fence + $1 WHERE name = 'queue' RETURNING fence",
        )
        .bind(due.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        let mut items = Vec::with_capacity(due.len());
        let first = top - due.len() as i64 + 1;
        for (i, (tenant, attempts, seq)) in due.into_iter().enumerate() {
            let fence = first + i as i64;
            sqlx::query(
                "UPDATE work_queue SET owner = $1, lease_until_ms = $2, fence = $3 \
                 WHERE tenant_id = $4",
            )
            .bind(owner)
            .bind(now + lease_ms)
            .bind(fence)
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
            items.push(WorkItem {
                tenant,
                attempts,
                seq,
                fence,
            });
        }
        tx.commit().await?;
        Ok(items)
    }

    /// One heartbeat of `me`, in one transaction: keeps its `pug_replicas` row alive for
    /// `lease_ms`, renews for `lease_ms` those of the work leases `held` (their fencing tokens)
    /// that are still its own and have not run out (one that ran out may be another pug's
    /// already, and is not taken back), and when `fleet` is true takes or renews the `fleet`
    /// lease if it is free or its own.
    pub async fn heartbeat(
        &self,
        me: &Replica,
        held: &[i64],
        lease_ms: i64,
        fleet: bool,
    ) -> Result<Heartbeat, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = self.clock_ms(&mut tx).await?;
        sqlx::query(
            "INSERT INTO pug_replicas (owner, host, backend, roles, alive_until_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner) DO UPDATE SET \
             alive_until_ms = excluded.alive_until_ms, roles = excluded.roles",
        )
        .bind(&me.owner)
        .bind(&me.host)
        .bind(&me.backend)
        .bind(&me.roles)
        .bind(now + lease_ms)
        .execute(&mut *tx)
        .await?;
        let mut renewed = Vec::with_capacity(held.len());
        // Tokens are integers: written into the statement, in chunks of a bounded size.
        for chunk in held.chunks(500) {
            let tokens: Vec<String> = chunk.iter().map(i64::to_string).collect();
            let rows = sqlx::query(&format!(
                "UPDATE work_queue SET lease_until_ms = $1 \
                 WHERE owner = $2 AND lease_until_ms > $3 AND fence IN ({}) \
                 RETURNING tenant_id, fence",
                tokens.join(",")
            ))
            .bind(now + lease_ms)
            .bind(&me.owner)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let id: String = row.try_get(0)?;
                if let Ok(tenant) = TenantId::parse(&id) {
                    renewed.push((tenant, row.try_get(1)?));
                }
            }
        }
        let fleet = if fleet {
            sqlx::query_scalar(
                "UPDATE leases SET owner = $1, lease_until_ms = $2, \
                   fence = CASE WHEN owner = $1 AND lease_until_ms > $3 THEN fence ELSE fence + 1 END \
                 WHERE name = 'fleet' AND (owner = $1 OR lease_until_ms <= $3) RETURNING fence",
            )
            .bind(&me.owner)
            .bind(now + lease_ms)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
        } else {
            None
        };
        // Rows of pugs gone for a minute are only noise in `live_replicas`.
        sqlx::query("DELETE FROM pug_replicas WHERE alive_until_ms < $1")
            .bind(now - 60_000)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Heartbeat { renewed, fleet })
    }

    /// A clean stop of `owner`: its work leases, its `fleet` lease and its `pug_replicas` row
    /// are given back at once, so other pugs take over without waiting for them to run out.
    pub async fn retire(&self, owner: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE work_queue SET owner = NULL, lease_until_ms = 0 WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE leases SET owner = NULL, lease_until_ms = 0 WHERE name = 'fleet' AND owner = $1",
        )
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM pug_replicas WHERE owner = $1")
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The pugs whose heartbeat is alive on this store, except `except`.
    pub async fn live_replicas(&self, except: &str) -> Result<Vec<Replica>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let now = self.clock_ms(&mut conn).await?;
        let rows = sqlx::query(
            "SELECT owner, host, backend, roles FROM pug_replicas \
             WHERE alive_until_ms > $1 AND owner <> $2 ORDER BY owner",
        )
        .bind(now)
        .bind(except)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Replica {
                    owner: row.try_get(0)?,
                    host: row.try_get(1)?,
                    backend: row.try_get(2)?,
                    roles: row.try_get(3)?,
                })
            })
            .collect()
    }

    /// Whether the store answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Who holds the `fleet` lease now, if anyone.
    pub async fn fleet_holder(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let now = self.clock_ms(&mut conn).await?;
        Ok(sqlx::query_scalar(
            "SELECT owner FROM leases WHERE name = 'fleet' AND lease_until_ms > $1",
        )
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?
        .flatten())
    }

    /// How many work rows are leased now, by any pug.
    pub async fn live_leases(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let now = self.clock_ms(&mut conn).await?;
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM work_queue WHERE lease_until_ms > $1")
                .bind(now)
                .fetch_one(&mut *conn)
                .await?,
        )
    }
}
