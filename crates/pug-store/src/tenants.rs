//! Tenants, their status, secrets, events and ports, and the one query the gateway's routing
//! table is refreshed from.

use pug_types::{
    Event, EventReason, ExposeSecret, SecretString, Tenant, TenantId, TenantSpec, TenantStatus,
};
use sqlx::Row;

use crate::{now_ms, Fence, Store, StoreError};

/// Longest event message kept; longer ones (a pasted log, say) are cut.
const MAX_EVENT_MESSAGE: usize = 2000;

impl Store {
    /// Creates a tenant with its secrets, a `Created` event and a queued reconcile, atomically.
    pub async fn create_tenant(
        &self,
        id: &TenantId,
        spec: &TenantSpec,
        secrets: &[(&str, SecretString)],
    ) -> Result<Tenant, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO tenants (id, spec, generation, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(spec_json(spec))
        .bind(1i64)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists(id.to_string()));
        }
        sqlx::query("INSERT INTO tenant_status (tenant_id, status) VALUES ($1, $2)")
            .bind(id.as_str())
            .bind(status_json(&TenantStatus::pending()))
            .execute(&mut *tx)
            .await?;
        for (name, value) in secrets {
            let aad = format!("{id}/{name}");
            let (nonce, ciphertext) = self.key.seal(&aad, value.expose_secret().as_bytes());
            sqlx::query(
                "INSERT INTO secrets (tenant_id, name, nonce, ciphertext) VALUES ($1, $2, $3, $4)",
            )
            .bind(id.as_str())
            .bind(*name)
            .bind(nonce)
            .bind(ciphertext)
            .execute(&mut *tx)
            .await?;
        }
        insert_event(
            &mut tx,
            id,
            "Created",
            &format!(
                "tenant created: Grafana {}, {} replica(s)",
                spec.version, spec.replicas
            ),
        )
        .await?;
        crate::queue::enqueue_in(&mut tx, id, now, true).await?;
        tx.commit().await?;
        Ok(Tenant {
            id: id.clone(),
            spec: spec.clone(),
            generation: 1,
            status: TenantStatus::pending(),
            created_at_ms: now,
        })
    }

    /// One tenant, or `None`.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let row = sqlx::query(
            "SELECT t.id, t.spec, t.generation, t.created_at_ms, s.status \
             FROM tenants t JOIN tenant_status s ON s.tenant_id = t.id WHERE t.id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| tenant_from_row(&r)).transpose()
    }

    /// Every tenant, ordered by id.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.id, t.spec, t.generation, t.created_at_ms, s.status \
             FROM tenants t JOIN tenant_status s ON s.tenant_id = t.id ORDER BY t.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    /// Every tenant id, ordered.
    pub async fn tenant_ids(&self) -> Result<Vec<TenantId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        ids.iter()
            .map(|s| TenantId::parse(s).map_err(|e| StoreError::Corrupt(e.message)))
            .collect()
    }

    /// Replaces a tenant's spec, bumping its generation, recording `event` and queueing a
    /// reconcile, atomically. With `expected_generation`, refuses if someone changed it since.
    pub async fn update_spec(
        &self,
        id: &TenantId,
        expected_generation: Option<i64>,
        spec: &TenantSpec,
        event: (&str, &str),
    ) -> Result<Tenant, StoreError> {
        let mut tx = self.begin_write().await?;
        // Write first: a SQLite transaction that reads and then writes fails at once (busy)
        // when another connection wrote in between; one that starts by writing waits its turn.
        let expected = expected_generation.unwrap_or(-1);
        let updated: Option<i64> = sqlx::query_scalar(
            "UPDATE tenants SET spec = $1, generation = generation + 1, updated_at_ms = $2 \
             WHERE id = $3 AND ($4 < 0 OR generation = $5) RETURNING generation",
        )
        .bind(spec_json(spec))
        .bind(now_ms())
        .bind(id.as_str())
        .bind(expected)
        .bind(expected)
        .fetch_optional(&mut *tx)
        .await?;
        if updated.is_none() {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT generation FROM tenants WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match found {
                None => StoreError::NotFound {
                    kind: "tenant",
                    id: id.to_string(),
                },
                Some(found) => StoreError::Conflict {
                    id: id.to_string(),
                    expected,
                    found,
                },
            });
        }
        insert_event(&mut tx, id, event.0, event.1).await?;
        crate::queue::enqueue_in(&mut tx, id, now_ms(), true).await?;
        tx.commit().await?;
        self.tenant(id).await?.ok_or_else(|| StoreError::NotFound {
            kind: "tenant",
            id: id.to_string(),
        })
    }

    /// Writes a tenant's status (no-op if the tenant is gone).
    pub async fn set_status(&self, id: &TenantId, status: &TenantStatus) -> Result<(), StoreError> {
        sqlx::query("UPDATE tenant_status SET status = $1 WHERE tenant_id = $2")
            .bind(status_json(status))
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// [`Store::set_status`] under a work lease: refused with [`StoreError::Fenced`] when the
    /// tenant's queue row is no longer `fence`'s (a no-op, as there, when the tenant is gone).
    pub async fn set_status_fenced(
        &self,
        id: &TenantId,
        status: &TenantStatus,
        fence: Fence<'_>,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE tenant_status SET status = $1 WHERE tenant_id = $2 AND EXISTS \
             (SELECT 1 FROM work_queue w WHERE w.tenant_id = $2 AND w.owner = $3 AND w.fence = $4)",
        )
        .bind(status_json(status))
        .bind(id.as_str())
        .bind(fence.owner)
        .bind(fence.token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 && self.tenant(id).await?.is_some() {
            return Err(StoreError::Fenced {
                tenant: id.to_string(),
            });
        }
        Ok(())
    }

    /// [`Store::add_event`] under a work lease: refused with [`StoreError::Fenced`] when the
    /// tenant's queue row is no longer `fence`'s.
    pub async fn add_event_fenced(
        &self,
        id: &TenantId,
        reason: EventReason,
        message: &str,
        fence: Fence<'_>,
    ) -> Result<(), StoreError> {
        let message: String = message.chars().take(MAX_EVENT_MESSAGE).collect();
        let done = sqlx::query(
            "INSERT INTO events (tenant_id, at_ms, reason, message) SELECT $1, $2, $3, $4 \
             WHERE EXISTS (SELECT 1 FROM work_queue w WHERE w.tenant_id = $1 AND w.owner = $5 \
             AND w.fence = $6)",
        )
        .bind(id.as_str())
        .bind(now_ms())
        .bind(reason.as_str())
        .bind(message)
        .bind(fence.owner)
        .bind(fence.token)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Fenced {
                tenant: id.to_string(),
            });
        }
        Ok(())
    }

    /// Removes a tenant's record, secrets, ports and queue entry; its events stay.
    pub async fn remove_tenant(&self, id: &TenantId) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for sql in [
            "DELETE FROM secrets WHERE tenant_id = $1",
            "DELETE FROM tenant_status WHERE tenant_id = $1",
            "DELETE FROM ports WHERE tenant_id = $1",
            "DELETE FROM tenant_uids WHERE tenant_id = $1",
            "DELETE FROM tenant_activity WHERE tenant_id = $1",
            "DELETE FROM work_queue WHERE tenant_id = $1",
            "DELETE FROM tenants WHERE id = $1",
        ] {
            sqlx::query(sql).bind(id.as_str()).execute(&mut *tx).await?;
        }
        insert_event(&mut tx, id, "Removed", "tenant record removed").await?;
        tx.commit().await?;
        Ok(())
    }

    /// One secret of a tenant, decrypted.
    pub async fn secret(
        &self,
        id: &TenantId,
        name: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        let row =
            sqlx::query("SELECT nonce, ciphertext FROM secrets WHERE tenant_id = $1 AND name = $2")
                .bind(id.as_str())
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let nonce: Vec<u8> = row.try_get(0)?;
        let ciphertext: Vec<u8> = row.try_get(1)?;
        let undecryptable = || StoreError::Undecryptable {
            tenant: id.to_string(),
            name: name.to_owned(),
        };
        let plain = self
            .key
            .open(&format!("{id}/{name}"), &nonce, &ciphertext)
            .ok_or_else(undecryptable)?;
        let text = String::from_utf8(plain).map_err(|_| undecryptable())?;
        Ok(Some(SecretString::from(text)))
    }

    /// Stores (or replaces) one secret of a tenant.
    pub async fn put_secret(
        &self,
        id: &TenantId,
        name: &str,
        value: &SecretString,
    ) -> Result<(), StoreError> {
        let (nonce, ciphertext) = self
            .key
            .seal(&format!("{id}/{name}"), value.expose_secret().as_bytes());
        sqlx::query(
            "INSERT INTO secrets (tenant_id, name, nonce, ciphertext) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(nonce)
        .bind(ciphertext)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends an event to a tenant's log. The caller redacts secrets first.
    pub async fn add_event(
        &self,
        id: &TenantId,
        reason: EventReason,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_event(&mut conn, id, reason.as_str(), message).await
    }

    /// The newest `limit` events of a tenant, oldest first.
    pub async fn events(&self, id: &TenantId, limit: i64) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, reason, message FROM events WHERE tenant_id = $1 \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(id.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(|r| {
                Ok(Event {
                    id: r.try_get(0)?,
                    tenant: id.clone(),
                    at_ms: r.try_get(1)?,
                    reason: r.try_get(2)?,
                    message: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        events.reverse();
        Ok(events)
    }

    /// The port of a tenant's replica: the one it already has, else the lowest port in
    /// `min..=max` that no replica holds and `is_free` accepts (e.g. nothing else listens on it).
    pub async fn allocate_port(
        &self,
        id: &TenantId,
        replica: u32,
        min: u16,
        max: u16,
        is_free: impl Fn(u16) -> bool,
    ) -> Result<u16, StoreError> {
        if let Some(port) = self.port_of(id, replica).await? {
            return Ok(port);
        }
        let taken: Vec<i64> =
            sqlx::query_scalar("SELECT port FROM ports WHERE port >= $1 AND port <= $2")
                .bind(min as i64)
                .bind(max as i64)
                .fetch_all(&self.pool)
                .await?;
        let taken: std::collections::HashSet<i64> = taken.into_iter().collect();
        for port in min..=max {
            if taken.contains(&(port as i64)) || !is_free(port) {
                continue;
            }
            let inserted = sqlx::query(
                "INSERT INTO ports (port, tenant_id, replica) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(port as i64)
            .bind(id.as_str())
            .bind(replica as i64)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(port);
            }
            // Lost a race: either another replica took this port (try the next one) or another
            // worker already allocated one for this replica (use it).
            if let Some(port) = self.port_of(id, replica).await? {
                return Ok(port);
            }
        }
        Err(StoreError::NoFreePort { min, max })
    }

    /// The port allocated to a tenant's replica, if any.
    pub async fn port_of(&self, id: &TenantId, replica: u32) -> Result<Option<u16>, StoreError> {
        let port: Option<i64> =
            sqlx::query_scalar("SELECT port FROM ports WHERE tenant_id = $1 AND replica = $2")
                .bind(id.as_str())
                .bind(replica as i64)
                .fetch_optional(&self.pool)
                .await?;
        Ok(port.map(|p| p as u16))
    }

    /// The user id a tenant's instances run as: the one it already has, else the lowest id in
    /// `base..base + count` that no tenant holds. Freed by [`remove_tenant`](Self::remove_tenant).
    pub async fn allocate_tenant_uid(
        &self,
        id: &TenantId,
        base: u32,
        count: u32,
    ) -> Result<u32, StoreError> {
        if let Some(uid) = self.tenant_uid(id).await? {
            return Ok(uid);
        }
        let end = base as i64 + count as i64;
        let taken: Vec<i64> =
            sqlx::query_scalar("SELECT uid FROM tenant_uids WHERE uid >= $1 AND uid < $2")
                .bind(base as i64)
                .bind(end)
                .fetch_all(&self.pool)
                .await?;
        let taken: std::collections::HashSet<i64> = taken.into_iter().collect();
        for uid in (base as i64)..end {
            if taken.contains(&uid) {
                continue;
            }
            let inserted = sqlx::query(
                "INSERT INTO tenant_uids (tenant_id, uid) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(id.as_str())
            .bind(uid)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(uid as u32);
            }
            // Lost a race: another tenant took this id (try the next) or another worker gave
            // this tenant one already (use it).
            if let Some(uid) = self.tenant_uid(id).await? {
                return Ok(uid);
            }
        }
        Err(StoreError::NoFreeUid { base, count })
    }

    /// The user id allocated to a tenant's instances, if any.
    pub async fn tenant_uid(&self, id: &TenantId) -> Result<Option<u32>, StoreError> {
        let uid: Option<i64> =
            sqlx::query_scalar("SELECT uid FROM tenant_uids WHERE tenant_id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(uid.map(|u| u as u32))
    }

    /// Frees the ports of a tenant's replicas numbered `from` and up.
    pub async fn release_ports(&self, id: &TenantId, from: u32) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ports WHERE tenant_id = $1 AND replica >= $2")
            .bind(id.as_str())
            .bind(from as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    id: &TenantId,
    reason: &str,
    message: &str,
) -> Result<(), StoreError> {
    let message: String = message.chars().take(MAX_EVENT_MESSAGE).collect();
    sqlx::query("INSERT INTO events (tenant_id, at_ms, reason, message) VALUES ($1, $2, $3, $4)")
        .bind(id.as_str())
        .bind(now_ms())
        .bind(reason)
        .bind(message)
        .execute(conn)
        .await?;
    Ok(())
}

fn spec_json(spec: &TenantSpec) -> String {
    serde_json::to_string(spec).expect("a spec always serializes")
}

fn status_json(status: &TenantStatus) -> String {
    serde_json::to_string(status).expect("a status always serializes")
}

fn tenant_from_row(r: &sqlx::any::AnyRow) -> Result<Tenant, StoreError> {
    let id: String = r.try_get(0)?;
    let spec: String = r.try_get(1)?;
    let status: String = r.try_get(4)?;
    let corrupt = |what: &str, e: String| StoreError::Corrupt(format!("tenant {id}: {what}: {e}"));
    Ok(Tenant {
        id: TenantId::parse(&id).map_err(|e| corrupt("id", e.message))?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("spec", e.to_string()))?,
        generation: r.try_get(2)?,
        status: serde_json::from_str(&status).map_err(|e| corrupt("status", e.to_string()))?,
        created_at_ms: r.try_get(3)?,
    })
}

/// The one query the gateway's routing table is refreshed from.
impl Store {
    /// Every tenant's status (phase and ready endpoints), for the gateway's routing table.
    pub async fn tenant_statuses(&self) -> Result<Vec<(TenantId, TenantStatus)>, StoreError> {
        self.tenant_status_texts()
            .await?
            .iter()
            .map(|(id, text)| Ok((id.clone(), parse_status(id, text)?)))
            .collect()
    }

    /// A number that moves whenever any tenant's status is written, added or removed (a trigger
    /// bumps it in the writing transaction). Read before [`Store::tenant_status_texts`], a value
    /// seen again later means that no status changed in between, so a poller can skip the read.
    pub async fn status_version(&self) -> Result<i64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT n FROM status_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Every tenant's status as stored, unparsed, in the order of their ids: for a poller
    /// that parses only what changed since its last read ([`parse_status`]).
    pub async fn tenant_status_texts(&self) -> Result<Vec<(TenantId, String)>, StoreError> {
        let rows = sqlx::query("SELECT tenant_id, status FROM tenant_status ORDER BY tenant_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let status: String = r.try_get(1)?;
                Ok((
                    TenantId::parse(&id).map_err(|e| StoreError::Corrupt(e.message))?,
                    status,
                ))
            })
            .collect()
    }

    /// One tenant's status, for a routing-table miss.
    pub async fn tenant_status(&self, id: &TenantId) -> Result<Option<TenantStatus>, StoreError> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM tenant_status WHERE tenant_id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        status
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| StoreError::Corrupt(format!("status of {id}: {e}")))
            })
            .transpose()
    }
}

/// A status as [`Store::tenant_status_texts`] returns it, parsed.
pub fn parse_status(id: &TenantId, text: &str) -> Result<TenantStatus, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("status of {id}: {e}")))
}
