//! One tenant-status snapshot for the whole process, published to the gateway's routes and the
//! renderer's token table (before, each polled the store's status table every second).
//!
//! Owns: the poller (the store's statuses every `gateway.refresh_interval` when the store's
//! status version moved, the store being where other pugs' controllers write), the statuses this process's controller
//! writes, patched into the snapshot at once ([`with_status`], pure), and the
//! `tokio::sync::watch` channel both read.
//!
//! Must not: decide routes or token scopes (the gateway and the renderer do).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pug_gateway::StatusSnapshot;
use pug_store::{Store, StoreError};
use pug_types::{TenantId, TenantStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The snapshot and its publisher.
#[derive(Clone)]
pub struct Fleet {
    tx: Arc<watch::Sender<StatusSnapshot>>,
}

impl Fleet {
    /// Reads the first snapshot from `store`.
    pub async fn read(store: &Store) -> Result<Self, StoreError> {
        let (tx, _) = watch::channel(Arc::new(store.tenant_statuses().await?));
        Ok(Self { tx: Arc::new(tx) })
    }

    /// A reader of the snapshot (it sees every snapshot published after this call).
    pub fn subscribe(&self) -> watch::Receiver<StatusSnapshot> {
        self.tx.subscribe()
    }

    /// The snapshot now.
    pub fn current(&self) -> StatusSnapshot {
        self.tx.borrow().clone()
    }

    /// `status` is `tenant`'s, just written by this process's controller.
    pub fn written(&self, tenant: &TenantId, status: &TenantStatus) {
        self.tx
            .send_modify(|s| *s = Arc::new(with_status(s, tenant, status)));
    }

    /// Re-reads the store every `every` and publishes what it read when it differs from the
    /// snapshot, until `shutdown`. A failed read keeps the last snapshot.
    ///
    /// Each poll first reads the store's status version ([`Store::status_version`]) and reads
    /// the statuses only when it moved since the last read: with 10,000 tenants, reading them
    /// all every second cost ~40 ms of CPU each second (~2 ms at 500), a burst that grew with
    /// the fleet on pug's 2 cores, where the gateway serves (bench/gateway/scale.sh). Of a
    /// read, only statuses whose stored text changed are parsed, and an unchanged fleet
    /// publishes nothing (so the gateway's route table and the renderer's token table are not
    /// rebuilt).
    pub async fn poll(self, store: Store, every: Duration, shutdown: CancellationToken) {
        let mut parsed: HashMap<TenantId, (String, TenantStatus)> = HashMap::new();
        // The status version of the last successful read (None: read at the first poll).
        let mut seen: Option<i64> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            // Read before the statuses: a write committed after this read moves the version
            // again, so the next poll reads once more; none means the statuses read are current.
            let version = match store.status_version().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read tenants' statuses");
                    continue;
                }
            };
            if seen == Some(version) {
                continue;
            }
            match store.tenant_status_texts().await {
                Ok(texts) => match reparse(&mut parsed, texts) {
                    Ok(statuses) => {
                        seen = Some(version);
                        self.tx.send_if_modified(|current| {
                            if **current == statuses {
                                return false;
                            }
                            *current = Arc::new(statuses);
                            true
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read tenants' statuses"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot read tenants' statuses"),
            }
        }
    }
}

/// The statuses of `texts` (the store's, in its order), parsing only those whose text is not
/// the one `cache` parsed last time; `cache` is left holding exactly the tenants of `texts`.
fn reparse(
    cache: &mut HashMap<TenantId, (String, TenantStatus)>,
    texts: Vec<(TenantId, String)>,
) -> Result<Vec<(TenantId, TenantStatus)>, StoreError> {
    let mut next = HashMap::with_capacity(texts.len());
    let mut out = Vec::with_capacity(texts.len());
    for (id, text) in texts {
        let status = match cache.remove(&id) {
            Some((old, status)) if old == text => status,
            _ => pug_store::parse_status(&id, &text)?,
        };
        out.push((id.clone(), status.clone()));
        next.insert(id, (text, status));
    }
    *cache = next;
    Ok(out)
}

/// `snapshot` with `tenant`'s status replaced by `status` (or added, for a tenant it does not
/// have yet).
pub fn with_status(
    snapshot: &[(TenantId, TenantStatus)],
    tenant: &TenantId,
    status: &TenantStatus,
) -> Vec<(TenantId, TenantStatus)> {
    let mut out = snapshot.to_vec();
    match out.iter_mut().find(|(id, _)| id == tenant) {
        Some((_, s)) => *s = status.clone(),
        None => out.push((tenant.clone(), status.clone())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pug_types::Phase;

    fn status(phase: Phase, endpoints: &[&str]) -> TenantStatus {
        TenantStatus {
            phase,
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
            ready_replicas: endpoints.len() as u32,
            ..TenantStatus::pending()
        }
    }

    #[test]
    fn a_written_status_replaces_its_tenants_or_joins() {
        let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
        let before = vec![(a.clone(), status(Phase::Provisioning, &[]))];
        let ready = status(Phase::Ready, &["127.0.0.1:3000"]);
        let cases = [
            ("replaced", &a, vec![(a.clone(), ready.clone())]),
            (
                "added",
                &b,
                vec![
                    (a.clone(), status(Phase::Provisioning, &[])),
                    (b.clone(), ready.clone()),
                ],
            ),
        ];
        for (what, tenant, want) in cases {
            assert_eq!(with_status(&before, tenant, &ready), want, "{what}");
        }
    }

    #[tokio::test]
    async fn the_poller_publishes_the_store_and_ends_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("pug.db").display());
        let store = Store::open_data_dir(dir.path(), &url).await.unwrap();
        let fleet = Fleet::read(&store).await.unwrap();
        assert!(fleet.current().is_empty());
        let a = TenantId::parse("a").unwrap();
        fleet.written(&a, &status(Phase::Ready, &["127.0.0.1:3000"]));
        assert_eq!(
            fleet.current().len(),
            1,
            "this process's writes count at once"
        );

        let mut seen = fleet.subscribe();
        let shutdown = CancellationToken::new();
        let poller = tokio::spawn(fleet.clone().poll(
            store.clone(),
            Duration::from_millis(10),
            shutdown.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(10), seen.changed())
            .await
            .expect("a snapshot within the period")
            .unwrap();
        assert!(
            seen.borrow().is_empty(),
            "the store's statuses (it has no tenant a) replace the snapshot"
        );
        // Nothing changes in the store: nothing more is published (20 polls and more).
        seen.borrow_and_update();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), seen.changed())
                .await
                .is_err(),
            "an unchanged fleet was published again"
        );
        // Another pug's controller writes to the store: the version moves, the poller reads.
        let b = TenantId::parse("b").unwrap();
        let spec: pug_types::TenantSpec = serde_json::from_value(serde_json::json!({
            "display_name": "b", "version": "11.3.0", "replicas": 1, "desired_state": "active",
        }))
        .unwrap();
        store.create_tenant(&b, &spec, &[]).await.unwrap();
        store
            .set_status(&b, &status(Phase::Ready, &["127.0.0.1:3001"]))
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            seen.wait_for(|s| {
                s.iter()
                    .any(|(id, st)| *id == b && st.endpoints == ["127.0.0.1:3001"])
            }),
        )
        .await
        .expect("a status written to the store is published")
        .unwrap();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), poller)
            .await
            .expect("the poller ends on shutdown")
            .unwrap();
    }

    #[test]
    fn only_changed_statuses_are_parsed_again() {
        let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
        let text = |s: &TenantStatus| serde_json::to_string(s).unwrap();
        let ready = status(Phase::Ready, &["127.0.0.1:3000"]);
        let mut cache = HashMap::new();
        let first = reparse(
            &mut cache,
            vec![(a.clone(), text(&ready)), (b.clone(), text(&ready))],
        )
        .unwrap();
        assert_eq!(
            first,
            vec![(a.clone(), ready.clone()), (b.clone(), ready.clone())]
        );
        // A cached text is not parsed again: a poisoned cache entry with the same text shows it.
        let marker = status(Phase::Failed, &[]);
        cache.insert(a.clone(), (text(&ready), marker.clone()));
        let sleeping = status(Phase::Sleeping, &[]);
        let second = reparse(
            &mut cache,
            vec![(a.clone(), text(&ready)), (b.clone(), text(&sleeping))],
        )
        .unwrap();
        assert_eq!(second, vec![(a.clone(), marker), (b.clone(), sleeping)]);
        // A tenant gone from the store leaves the cache too; a corrupt text is an error.
        assert_eq!(reparse(&mut cache, vec![]).unwrap(), vec![]);
        assert!(cache.is_empty());
        assert!(reparse(&mut cache, vec![(a, "{".into())]).is_err());
    }
}
