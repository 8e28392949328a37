//! Tenant activity and wakes, on SQLite and on a real PostgreSQL server (the same queries on
//! both): batched activity writes keep the newest time, a wake sets activity to now, keeps the
//! first pending wake, queues the tenant, and refuses a tenant that does not exist.
//! PostgreSQL from `PUG_TEST_POSTGRES_URL` (default: the `pugtest` role `.ci/run` creates).

mod common;

use pug_store::Store;
use pug_types::{TenantId, TenantSpec};

fn spec() -> TenantSpec {
    serde_json::from_value(serde_json::json!({
        "display_name": "acme", "version": "11.3.0", "replicas": 1, "desired_state": "active",
    }))
    .unwrap()
}

async fn the_activity_story(store: &Store) {
    let ids: Vec<TenantId> = (0..450)
        .map(|i| TenantId::parse(&format!("t{i}")).unwrap())
        .collect();
    for id in &ids[..3] {
        store.create_tenant(id, &spec(), &[]).await.unwrap();
    }
    let (a, b) = (&ids[0], &ids[1]);
    let never = store.activity(a).await.unwrap();
    assert_eq!((never.last_activity_ms, never.wake), (None, None));

    // One batch, more rows than one statement takes; the newest time wins.
    let batch: Vec<(TenantId, i64)> = ids.iter().map(|id| (id.clone(), 5_000)).collect();
    store.record_activity(&batch).await.unwrap();
    store
        .record_activity(&[(a.clone(), 9_000), (b.clone(), 1_000)])
        .await
        .unwrap();
    assert_eq!(
        store.activity(a).await.unwrap().last_activity_ms,
        Some(9_000)
    );
    assert_eq!(
        store.activity(b).await.unwrap().last_activity_ms,
        Some(5_000)
    );
    assert_eq!(store.last_activities().await.unwrap().len(), 450);
    store.record_activity(&[]).await.unwrap();

    // A wake: activity now, the wake remembered, the tenant queued.
    let busy = std::collections::HashSet::new();
    for item in store.due_work(i64::MAX, 10, &busy).await.unwrap() {
        store.finish_work(&item).await.unwrap();
    }
    assert!(store.wake(a, "request", 20_000).await.unwrap());
    let woken = store.activity(a).await.unwrap();
    assert_eq!(woken.last_activity_ms, Some(20_000));
    assert_eq!(woken.wake, Some((20_000, "request".into())));
    let due = store.due_work(20_000, 10, &busy).await.unwrap();
    assert_eq!(due.iter().map(|w| &w.tenant).collect::<Vec<_>>(), [a]);

    // A second wake while the first is pending keeps the first's time and cause.
    assert!(store.wake(a, "api", 21_000).await.unwrap());
    let still = store.activity(a).await.unwrap();
    assert_eq!(still.last_activity_ms, Some(21_000));
    assert_eq!(still.wake, Some((20_000, "request".into())));

    // Finishing an older wake leaves a newer one alone; finishing it clears it.
    store.finish_wake(a, 19_000).await.unwrap();
    assert!(store.activity(a).await.unwrap().wake.is_some());
    store.finish_wake(a, 20_000).await.unwrap();
    let done = store.activity(a).await.unwrap();
    assert_eq!((done.last_activity_ms, done.wake), (Some(21_000), None));

    // No such tenant: nothing written, nothing queued.
    let ghost = TenantId::parse("ghost").unwrap();
    assert!(!store.wake(&ghost, "request", 22_000).await.unwrap());
    assert_eq!(store.activity(&ghost).await.unwrap().last_activity_ms, None);

    // Removing a tenant removes its activity.
    store.remove_tenant(b).await.unwrap();
    assert_eq!(store.activity(b).await.unwrap().last_activity_ms, None);
}

#[tokio::test]
async fn activity_and_wakes_on_sqlite() {
    common::on_sqlite(|store| async move { the_activity_story(&store).await }).await;
}

#[tokio::test]
async fn activity_and_wakes_on_postgres() {
    common::on_postgres("activity_test", |store| async move {
        the_activity_story(&store).await
    })
    .await;
}

/// A resync spreads the tenants' due times evenly over its interval (no burst of the whole
/// fleet), and a tenant due sooner keeps its time.
async fn the_resync_story(store: Store) {
    let ids: Vec<TenantId> = (0..100)
        .map(|i| TenantId::parse(&format!("r{i:03}")).unwrap())
        .collect();
    for id in &ids {
        store.create_tenant(id, &spec(), &[]).await.unwrap();
    }
    let busy = std::collections::HashSet::new();
    for item in store.due_work(i64::MAX, 1000, &busy).await.unwrap() {
        store.finish_work(&item).await.unwrap();
    }
    store.enqueue(&ids[99], 0).await.unwrap();
    let before = pug_store::now_ms();
    store
        .enqueue_all(std::time::Duration::from_secs(100), true)
        .await
        .unwrap();
    let after = pug_store::now_ms();
    // Due by now: the first tenant (offset 0) and the one due at 0 already.
    let due_now = store.due_work(after, 1000, &busy).await.unwrap();
    let mut now: Vec<&str> = due_now.iter().map(|w| w.tenant.as_str()).collect();
    now.sort();
    assert_eq!(now, ["r000", "r099"]);
    // One tenant a second after that: the i-th is due i seconds after the resync.
    for i in [1usize, 50, 98] {
        let due = store
            .due_work(before + i as i64 * 1000 - 1, 1000, &busy)
            .await
            .unwrap();
        assert_eq!(due.len(), i + 1, "due within {i} s: {due:?}");
        let all = store
            .due_work(after + i as i64 * 1000, 1000, &busy)
            .await
            .unwrap();
        assert_eq!(all.len(), i + 2, "due within {i} s");
    }
    // Zero spread: all at once.
    store
        .enqueue_all(std::time::Duration::ZERO, true)
        .await
        .unwrap();
    let due = store
        .due_work(pug_store::now_ms(), 1000, &busy)
        .await
        .unwrap();
    assert_eq!(due.len(), 100);

    // Without sleeping tenants: those whose stored phase is `sleeping` are left out.
    for item in due {
        store.finish_work(&item).await.unwrap();
    }
    let asleep = pug_types::TenantStatus {
        phase: pug_types::Phase::Sleeping,
        ..pug_types::TenantStatus::pending()
    };
    for id in &ids[..60] {
        store.set_status(id, &asleep).await.unwrap();
    }
    for item in store.due_work(i64::MAX, 1000, &busy).await.unwrap() {
        store.finish_work(&item).await.unwrap();
    }
    store
        .enqueue_all(std::time::Duration::ZERO, false)
        .await
        .unwrap();
    let due = store
        .due_work(pug_store::now_ms(), 1000, &busy)
        .await
        .unwrap();
    let mut queued: Vec<String> = due.iter().map(|w| w.tenant.to_string()).collect();
    queued.sort();
    let awake: Vec<String> = ids[60..].iter().map(|i| i.to_string()).collect();
    assert_eq!(queued, awake);
}

#[tokio::test]
async fn resync_is_spread_on_sqlite() {
    common::on_sqlite(the_resync_story).await;
}

#[tokio::test]
async fn resync_is_spread_on_postgres() {
    common::on_postgres("resync", the_resync_story).await;
}

/// Writes that read first (a grant checks its user and tenant) from many API calls at once:
/// each waits its turn, none fails with "database is locked" (SQLite fails a deferred
/// transaction's upgrade from reading to writing at once, whatever its busy timeout).
async fn the_concurrent_writes_story(store: Store) {
    let tenants: Vec<TenantId> = (0..40)
        .map(|i| TenantId::parse(&format!("g{i:02}")).unwrap())
        .collect();
    for id in &tenants {
        store.create_tenant(id, &spec(), &[]).await.unwrap();
    }
    for u in 0..8 {
        store
            .create_user(&format!("u{u}"), "", "", "x")
            .await
            .unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for u in 0..8 {
        let (store, tenants) = (store.clone(), tenants.clone());
        tasks.spawn(async move {
            for t in &tenants {
                store.grant(&format!("u{u}"), t, "Viewer").await?;
                store.wake(t, "request", pug_store::now_ms()).await?;
            }
            Ok::<(), pug_store::StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().expect("a concurrent write failed");
    }
    for u in 0..8 {
        assert_eq!(
            store.memberships_of(&format!("u{u}")).await.unwrap().len(),
            40
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_wait_their_turn_on_sqlite() {
    common::on_sqlite(the_concurrent_writes_story).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_wait_their_turn_on_postgres() {
    common::on_postgres("writes", the_concurrent_writes_story).await;
}
