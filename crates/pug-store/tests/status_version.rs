//! The status version, on SQLite and on a real PostgreSQL server: it moves with every change
//! of a tenant's status (written, added with the tenant, removed with it) and with nothing
//! else, so the status poller may skip reading every status while it stands still.
//! PostgreSQL from `PUG_TEST_POSTGRES_URL` (default: the `pugtest` role `.ci/run` creates).

mod common;

use pug_store::Store;
use pug_types::{Phase, TenantId, TenantSpec, TenantStatus};

fn spec() -> TenantSpec {
    serde_json::from_value(serde_json::json!({
        "display_name": "acme", "version": "11.3.0", "replicas": 1, "desired_state": "active",
    }))
    .unwrap()
}

async fn the_status_version_story(store: Store) {
    let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
    let v0 = store.status_version().await.unwrap();
    store.create_tenant(&a, &spec(), &[]).await.unwrap();
    let v1 = store.status_version().await.unwrap();
    assert_ne!(v1, v0, "a new tenant's status row moves it");

    // What is not a status leaves it where it is.
    store.record_activity(&[(a.clone(), 5_000)]).await.unwrap();
    store.wake(&a, "request", 6_000).await.unwrap();
    store
        .enqueue_all(std::time::Duration::ZERO, true)
        .await
        .unwrap();
    assert_eq!(
        store.status_version().await.unwrap(),
        v1,
        "no status changed"
    );

    let mut ready = TenantStatus::pending();
    ready.phase = Phase::Ready;
    ready.endpoints = vec!["127.0.0.1:3000".into()];
    store.set_status(&a, &ready).await.unwrap();
    let v2 = store.status_version().await.unwrap();
    assert_ne!(v2, v1, "a written status moves it");
    assert_eq!(
        store.status_version().await.unwrap(),
        v2,
        "reading does not"
    );

    // A status write for a tenant that does not exist changes no row.
    store.set_status(&b, &ready).await.unwrap();
    assert_eq!(store.status_version().await.unwrap(), v2);

    store.remove_tenant(&a).await.unwrap();
    let v3 = store.status_version().await.unwrap();
    assert_ne!(v3, v2, "a removed tenant's status moves it");
    assert!(store.tenant_status_texts().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_status_version_moves_with_statuses_only_on_sqlite() {
    common::on_sqlite(the_status_version_story).await;
}

#[tokio::test]
async fn the_status_version_moves_with_statuses_only_on_postgres() {
    common::on_postgres("status_version", the_status_version_story).await;
}
