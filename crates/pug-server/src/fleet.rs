//! One tenant-status snapshot for the whole process, published to the gateway's routes and the
//! renderer's token table (before, each polled the store's status table every second).
//!
//! Owns: the poller (the store's `tenant_statuses` every `gateway.refresh_interval`, the
//! store being where other pugs' controllers write), the statuses this process's controller
//! writes, patched into the snapshot at once ([`with_status`], pure), and the
//! `tokio::sync::watch` channel both read.
//!
//! Must not: decide routes or token scopes (the gateway and the renderer do).

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

    /// Re-reads the store every `every` and publishes what it read, until `shutdown`. A failed
    /// read keeps the last snapshot.
    pub async fn poll(self, store: Store, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match store.tenant_statuses().await {
                Ok(statuses) => {
                    self.tx.send_replace(Arc::new(statuses));
                }
                Err(e) => tracing::warn!(error = %e, "cannot read tenants' statuses"),
            }
        }
    }
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
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), poller)
            .await
            .expect("the poller ends on shutdown")
            .unwrap();
    }
}
