//! Work leases and the fleet lease, on SQLite and on a real PostgreSQL server (the same story
//! on both): a claim hands each due row to one owner under a fencing token, never more rows
//! than the global limit allows across owners; a heartbeat renews only live leases of its
//! owner; a lease that runs out is claimed by another owner under a larger token, after which
//! the old owner's finish changes nothing; the fleet lease has one holder at a time; a clean
//! stop gives everything back at once.
//! PostgreSQL from `PUG_TEST_POSTGRES_URL` (default: the `pugtest` role `.ci/run` creates).

mod common;

use std::time::Duration;

use pug_store::{now_ms, Replica, Store};
use pug_types::{TenantId, TenantSpec};

fn spec() -> TenantSpec {
    serde_json::from_value(serde_json::json!({
        "display_name": "acme", "version": "11.3.0", "replicas": 1, "desired_state": "active",
    }))
    .unwrap()
}

fn replica(owner: &str) -> Replica {
    Replica {
        owner: owner.into(),
        host: "test".into(),
        backend: "fake".into(),
        roles: "controller".into(),
    }
}

fn fences_of(items: &[pug_store::WorkItem]) -> Vec<i64> {
    items.iter().map(|w| w.fence).collect()
}

/// Polls `claim` until it returns something, for at most 10 s.
async fn claim_when_free(store: &Store, owner: &str, lease_ms: i64) -> Vec<pug_store::WorkItem> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let items = store
            .claim_work(owner, now_ms(), 10, 10, lease_ms)
            .await
            .unwrap();
        if !items.is_empty() {
            return items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn the_lease_story(store: &Store) {
    let ids: Vec<TenantId> = (0..5)
        .map(|i| TenantId::parse(&format!("t{i}")).unwrap())
        .collect();
    for id in &ids {
        store.create_tenant(id, &spec(), &[]).await.unwrap();
    }
    let long = 60_000;

    // The global limit holds across owners; each row goes to one owner.
    let a = store.claim_work("a", now_ms(), 10, 3, long).await.unwrap();
    assert_eq!(a.len(), 3);
    assert!(store
        .claim_work("b", now_ms(), 10, 3, long)
        .await
        .unwrap()
        .is_empty());
    let b = store.claim_work("b", now_ms(), 10, 10, long).await.unwrap();
    assert_eq!(b.len(), 2);
    let mut tenants: Vec<&TenantId> = a.iter().chain(&b).map(|w| &w.tenant).collect();
    tenants.sort();
    assert_eq!(tenants, ids.iter().collect::<Vec<_>>());
    let mut fences: Vec<i64> = a.iter().chain(&b).map(|w| w.fence).collect();
    fences.sort();
    fences.dedup();
    assert_eq!(fences.len(), 5, "every acquisition gets its own token");
    assert!(store
        .claim_work("c", now_ms(), 10, 10, long)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.live_leases().await.unwrap(), 5);

    // A heartbeat renews its owner's leases only; the fleet lease has one holder.
    let beat_a = store
        .heartbeat(&replica("a"), &fences_of(&a), long, true)
        .await
        .unwrap();
    assert_eq!(beat_a.renewed.len(), 3);
    let fleet_a = beat_a.fleet.expect("a free fleet lease is taken");
    let beat_b = store
        .heartbeat(&replica("b"), &fences_of(&b), long, true)
        .await
        .unwrap();
    assert_eq!(beat_b.renewed.len(), 2);
    assert_eq!(beat_b.fleet, None, "a holds the fleet lease");
    assert_eq!(
        store
            .heartbeat(&replica("a"), &fences_of(&a), long, true)
            .await
            .unwrap()
            .fleet,
        Some(fleet_a),
        "renewing keeps the token"
    );
    assert_eq!(store.fleet_holder().await.unwrap().as_deref(), Some("a"));
    let others: Vec<String> = store
        .live_replicas("a")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.owner)
        .collect();
    assert_eq!(others, ["b"]);

    // A heartbeat renews only the leases it names.
    let one = store
        .heartbeat(&replica("a"), &[a[0].fence], long, false)
        .await
        .unwrap();
    assert_eq!(one.renewed, vec![(a[0].tenant.clone(), a[0].fence)]);

    // b finishes its two: they are gone. Owner c takes none of a's live leases.
    for item in &b {
        assert!(store.finish_work(item).await.unwrap());
    }

    // a's leases run out (no heartbeat), c claims them under larger tokens.
    let short = 200;
    let a_short = store
        .claim_work("a", now_ms(), 10, 10, short)
        .await
        .unwrap();
    assert!(a_short.is_empty(), "a holds them already");
    store.retire("b").await.unwrap();
    // Shorten a's leases by taking them over after a clean stop of a, then let c's run out.
    store.retire("a").await.unwrap();
    let c = store
        .claim_work("c", now_ms(), 10, 10, short)
        .await
        .unwrap();
    assert_eq!(c.len(), 3);
    let d = claim_when_free(store, "d", long).await;
    assert_eq!(d.len(), 3);
    for (old, new) in c.iter().zip(&d) {
        assert_eq!(old.tenant, new.tenant);
        assert!(
            new.fence > old.fence,
            "a later acquisition has a larger token"
        );
    }
    // c's heartbeat no longer renews them, and c's finish or requeue changes nothing.
    assert!(store
        .heartbeat(&replica("c"), &fences_of(&c), long, false)
        .await
        .unwrap()
        .renewed
        .is_empty());
    assert!(!store.finish_work(&c[0]).await.unwrap());
    assert!(!store.requeue_work(&c[1], 0, 7).await.unwrap());
    assert_eq!(store.queue_depth().await.unwrap(), 3);
    assert_eq!(store.live_leases().await.unwrap(), 3);

    // d requeues one (its lease given back, due later) and finishes the others.
    assert!(store.requeue_work(&d[0], now_ms() + long, 1).await.unwrap());
    assert_eq!(store.live_leases().await.unwrap(), 2);
    assert!(store
        .claim_work("e", now_ms(), 10, 10, long)
        .await
        .unwrap()
        .is_empty());
    assert!(store.finish_work(&d[1]).await.unwrap());
    assert!(store.finish_work(&d[2]).await.unwrap());
    assert_eq!(store.queue_depth().await.unwrap(), 1);

    // Re-enqueued during a pass: the finish keeps the row and gives the lease back.
    let again = store.claim_work("d", i64::MAX, 10, 10, long).await.unwrap();
    assert_eq!(again.len(), 1);
    store.enqueue(&again[0].tenant, now_ms()).await.unwrap();
    assert!(store.finish_work(&again[0]).await.unwrap());
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    assert_eq!(store.live_leases().await.unwrap(), 0);

    // The fleet lease: a short one runs out and passes to another owner under a larger token.
    let f = store
        .heartbeat(&replica("f"), &[], short, true)
        .await
        .unwrap()
        .fleet
        .expect("free after a's clean stop");
    assert!(f > fleet_a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let g = loop {
        if let Some(g) = store
            .heartbeat(&replica("g"), &[], long, true)
            .await
            .unwrap()
            .fleet
        {
            break g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(g > f);
    assert_eq!(
        store
            .heartbeat(&replica("f"), &[], short, true)
            .await
            .unwrap()
            .fleet,
        None
    );
    store.retire("g").await.unwrap();
    assert_eq!(store.fleet_holder().await.unwrap(), None);
}

#[tokio::test]
async fn leases_on_sqlite() {
    common::on_sqlite(|store| async move { the_lease_story(&store).await }).await;
}

#[tokio::test]
async fn leases_on_postgres() {
    common::on_postgres("lease_test", |store| async move {
        the_lease_story(&store).await
    })
    .await;
}

/// Status and event writes under a lease apply while the lease is the writer's, and are
/// refused once another owner took the tenant over: a pug that lost its lease cannot write
/// over the new owner's status nor add to its events.
async fn the_fenced_writes_story(store: Store) {
    use pug_store::{Fence, StoreError};
    use pug_types::{EventReason, Phase, TenantStatus};
    let id = TenantId::parse("fenced").unwrap();
    store.create_tenant(&id, &spec(), &[]).await.unwrap();
    let status = |phase| TenantStatus {
        phase,
        ..TenantStatus::pending()
    };
    let a = store.claim_work("a", now_ms(), 10, 10, 200).await.unwrap();
    assert_eq!(a.len(), 1);
    let fa = Fence {
        owner: "a",
        token: a[0].fence,
    };
    store
        .set_status_fenced(&id, &status(Phase::Provisioning), fa)
        .await
        .unwrap();
    store
        .add_event_fenced(&id, EventReason::InstanceStarted, "by a", fa)
        .await
        .unwrap();

    // a's lease runs out, b takes the tenant over and writes.
    let b = claim_when_free(&store, "b", 60_000).await;
    let fb = Fence {
        owner: "b",
        token: b[0].fence,
    };
    store
        .set_status_fenced(&id, &status(Phase::Ready), fb)
        .await
        .unwrap();
    // a, late: refused, b's status and events stand.
    let late = store
        .set_status_fenced(&id, &status(Phase::Failed), fa)
        .await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    let late = store
        .add_event_fenced(&id, EventReason::InstanceRestarted, "by a, late", fa)
        .await;
    assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
    let t = store.tenant(&id).await.unwrap().unwrap();
    assert_eq!(t.status.phase, Phase::Ready);
    let messages: Vec<String> = store
        .events(&id, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(messages.contains(&"by a".to_owned()), "{messages:?}");
    assert!(!messages.iter().any(|m| m == "by a, late"), "{messages:?}");
    // A tenant gone meanwhile: its status write is a no-op, as without a lease.
    store.remove_tenant(&id).await.unwrap();
    store
        .set_status_fenced(&id, &status(Phase::Ready), fb)
        .await
        .unwrap();
}

#[tokio::test]
async fn fenced_writes_on_sqlite() {
    common::on_sqlite(the_fenced_writes_story).await;
}

#[tokio::test]
async fn fenced_writes_on_postgres() {
    common::on_postgres("fenced_test", the_fenced_writes_story).await;
}

/// Every pug on a store keeps a local CLI token of its own: a second pug's start does not
/// revoke the first one's (not even when both start at once, before either is alive in the
/// store), a pug's restart replaces only its own, and the tokens of pugs no longer alive are
/// removed once they are older than the grace; none of them counts as "the store has tokens"
/// (the first admin token is still created on a fresh store).
async fn the_local_tokens_story(store: Store) {
    use pug_store::{Role, LOCAL_TOKEN_GRACE_MS};
    let verify = |t: pug_types::SecretString| {
        let store = store.clone();
        async move { store.verify_token(&t).await.unwrap() }
    };
    let now = now_ms();
    let later = now + LOCAL_TOKEN_GRACE_MS + 1_000;
    let alive = |owners: &[&str]| owners.iter().map(|o| o.to_string()).collect::<Vec<_>>();
    // a and b start at the same moment: neither is alive in the store yet.
    let a = store.replace_local_token("pug-a", &[], now).await.unwrap();
    let b = store.replace_local_token("pug-b", &[], now).await.unwrap();
    assert!(!store.has_tokens().await.unwrap(), "only local tokens");
    assert_eq!(
        verify(a.clone()).await,
        Some(Role::Admin),
        "b's start kept a's"
    );
    assert_eq!(verify(b.clone()).await, Some(Role::Admin));
    // a restarts later, with b alive.
    let a2 = store
        .replace_local_token("pug-a", &alive(&["pug-b"]), later)
        .await
        .unwrap();
    assert_eq!(verify(a).await, None, "a restarted: its old token is gone");
    assert_eq!(verify(a2.clone()).await, Some(Role::Admin));
    assert_eq!(verify(b.clone()).await, Some(Role::Admin), "b's kept");
    // c starts after b died: b's token goes, a's (alive) stays.
    let c = store
        .replace_local_token("pug-c", &alive(&["pug-a"]), later)
        .await
        .unwrap();
    assert_eq!(verify(b).await, None, "a dead pug's token is removed");
    assert_eq!(verify(a2).await, Some(Role::Admin));
    assert_eq!(verify(c).await, Some(Role::Admin));
    assert!(!store.has_tokens().await.unwrap());
}

#[tokio::test]
async fn local_tokens_on_sqlite() {
    common::on_sqlite(the_local_tokens_story).await;
}

#[tokio::test]
async fn local_tokens_on_postgres() {
    common::on_postgres("local_tokens", the_local_tokens_story).await;
}
