//! The store against a real SQLite file.

use std::collections::HashSet;

use pug_store::{generate_secret, secret, MasterKey, Role, Store, StoreError};
use pug_types::{DesiredState, ExposeSecret, GrafanaVersion, Overrides, TenantId, TenantSpec};

fn spec(version: &str) -> TenantSpec {
    TenantSpec {
        display_name: "Acme".into(),
        version: GrafanaVersion::parse(version).unwrap(),
        replicas: pug_types::Replicas::ONE,
        desired_state: DesiredState::Active,
        overrides: Overrides::default(),
        labels: Default::default(),
        datasources: Default::default(),
        dashboards: Default::default(),
        idle_timeout_secs: None,
    }
}

async fn open(dir: &std::path::Path) -> Store {
    let url = format!("sqlite://{}", dir.join("pug.db").display());
    Store::open_data_dir(dir, &url).await.unwrap()
}

#[tokio::test]
async fn tenants_secrets_events_and_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = TenantId::parse("acme").unwrap();
    let password = generate_secret();
    store
        .create_tenant(
            &id,
            &spec("11.3.0"),
            &[(secret::ADMIN_PASSWORD, password.clone())],
        )
        .await
        .unwrap();

    // Duplicate ids are refused and change nothing.
    let err = store
        .create_tenant(&id, &spec("11.4.0"), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)));
    assert_eq!(
        store
            .tenant(&id)
            .await
            .unwrap()
            .unwrap()
            .spec
            .version
            .to_string(),
        "11.3.0"
    );

    // Secrets come back decrypted, and are not in the database file in clear.
    let back = store
        .secret(&id, secret::ADMIN_PASSWORD)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.expose_secret(), password.expose_secret());
    store.close().await;
    let raw = std::fs::read(dir.path().join("pug.db")).unwrap();
    let wal = std::fs::read(dir.path().join("pug.db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        assert!(!bytes
            .windows(password.expose_secret().len())
            .any(|w| w == password.expose_secret().as_bytes()));
    }

    // Reopening with the same key works; with another key it fails clearly.
    let store = open(dir.path()).await;
    let url = format!("sqlite://{}", dir.path().join("pug.db").display());
    let err = Store::open(&url, MasterKey::generate()).await.unwrap_err();
    assert!(err.to_string().contains("not the key"), "{err}");

    // Spec updates bump the generation; stale writers are refused.
    let t = store
        .update_spec(&id, Some(1), &spec("11.4.0"), ("Upgrade", "to 11.4.0"))
        .await
        .unwrap();
    assert_eq!(t.generation, 2);
    assert!(matches!(
        store
            .update_spec(&id, Some(1), &spec("11.5.0"), ("Upgrade", "x"))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let events = store.events(&id, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
        ["Created", "Upgrade"]
    );

    // The queue deduplicates and survives a finished item only if re-enqueued meanwhile.
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    store.enqueue(&id, 0).await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    let items = store
        .due_work(pug_store::now_ms(), 10, &HashSet::new())
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    store.enqueue(&id, 0).await.unwrap();
    store.finish_work(&items[0]).await.unwrap();
    assert_eq!(
        store.queue_depth().await.unwrap(),
        1,
        "re-enqueued while in flight"
    );
    let items = store
        .due_work(pug_store::now_ms(), 10, &HashSet::new())
        .await
        .unwrap();
    store.finish_work(&items[0]).await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 0);

    // Ports are stable per replica and never shared.
    let other = TenantId::parse("other").unwrap();
    store
        .create_tenant(&other, &spec("11.3.0"), &[])
        .await
        .unwrap();
    let a = store
        .allocate_port(&id, 0, 30000, 30010, |_| true)
        .await
        .unwrap();
    let a2 = store
        .allocate_port(&id, 0, 30000, 30010, |_| true)
        .await
        .unwrap();
    let b = store
        .allocate_port(&other, 0, 30000, 30010, |p| p != 30001)
        .await
        .unwrap();
    assert_eq!(a, a2);
    assert_eq!((a, b), (30000, 30002));
    store.release_ports(&id, 0).await.unwrap();
    assert_eq!(store.port_of(&id, 0).await.unwrap(), None);

    // Removal keeps the audit log.
    store.remove_tenant(&id).await.unwrap();
    assert!(store.tenant(&id).await.unwrap().is_none());
    assert!(!store.events(&id, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn tokens_are_stored_as_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    assert!(!store.has_tokens().await.unwrap());
    let admin = store.create_token("admin", Role::Admin).await.unwrap();
    let read = store.create_token("prometheus", Role::Read).await.unwrap();
    assert!(admin.expose_secret().starts_with("pug_"));
    assert_eq!(store.verify_token(&admin).await.unwrap(), Some(Role::Admin));
    assert_eq!(store.verify_token(&read).await.unwrap(), Some(Role::Read));
    assert_eq!(
        store
            .verify_token(&"pug_nope".to_string().into())
            .await
            .unwrap(),
        None
    );
    store.close().await;
    let raw = std::fs::read(dir.path().join("pug.db")).unwrap();
    let wal = std::fs::read(dir.path().join("pug.db-wal")).unwrap_or_default();
    for bytes in [&raw, &wal] {
        assert!(!bytes
            .windows(20)
            .any(|w| w == &admin.expose_secret().as_bytes()[..20]));
    }
}

#[tokio::test]
async fn tenant_uids_are_stable_unique_and_freed_on_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let a = TenantId::parse("acme").unwrap();
    let b = TenantId::parse("bravo").unwrap();
    for id in [&a, &b] {
        store.create_tenant(id, &spec("11.3.0"), &[]).await.unwrap();
    }
    let ua = store.allocate_tenant_uid(&a, 200_000, 2).await.unwrap();
    let ub = store.allocate_tenant_uid(&b, 200_000, 2).await.unwrap();
    assert_eq!((ua, ub), (200_000, 200_001));
    assert_eq!(store.allocate_tenant_uid(&a, 200_000, 2).await.unwrap(), ua);
    assert_eq!(store.tenant_uid(&b).await.unwrap(), Some(ub));
    let c = TenantId::parse("charlie").unwrap();
    store.create_tenant(&c, &spec("11.3.0"), &[]).await.unwrap();
    let err = store.allocate_tenant_uid(&c, 200_000, 2).await.unwrap_err();
    assert!(matches!(err, StoreError::NoFreeUid { .. }), "{err}");
    assert!(err.to_string().contains("process.tenant_uid_base"), "{err}");
    // Removing a tenant frees its id for the next one.
    store.remove_tenant(&a).await.unwrap();
    assert_eq!(store.tenant_uid(&a).await.unwrap(), None);
    assert_eq!(store.allocate_tenant_uid(&c, 200_000, 2).await.unwrap(), ua);
}

#[tokio::test]
async fn the_store_and_key_files_are_private_even_when_created_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // An older pug left them world-readable.
    let zero_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    for (f, contents) in [("pug.db", ""), ("master.key", zero_key)] {
        let path = dir.path().join(f);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let store = open(dir.path()).await;
    store
        .create_tenant(&TenantId::parse("acme").unwrap(), &spec("11.3.0"), &[])
        .await
        .unwrap();
    for f in ["pug.db", "pug.db-wal", "pug.db-shm", "master.key"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f} has mode {:o}", mode & 0o777);
    }
    // A fresh data dir: created private from the start.
    let fresh = tempfile::tempdir().unwrap();
    let _store = open(fresh.path()).await;
    let mode = std::fs::metadata(fresh.path().join("pug.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn revoked_and_expired_tokens_stop_verifying_at_once() {
    use pug_store::{RevokeRefusal, TokenCheck};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let admin = store.create_token("admin", Role::Admin).await.unwrap();
    let (leaked, info) = store
        .create_token_expiring("ci", Role::Admin, None)
        .await
        .unwrap();
    let (old, _) = store
        .create_token_expiring("old", Role::Read, Some(1))
        .await
        .unwrap();
    assert_eq!(
        store.check_token(&old).await.unwrap(),
        TokenCheck::Expired { at_ms: 1 }
    );
    assert_eq!(store.verify_token(&old).await.unwrap(), None);

    // The listing has no secret and no hash; the use was recorded.
    assert_eq!(
        store.check_token(&leaked).await.unwrap(),
        TokenCheck::Valid(Role::Admin)
    );
    let listing = format!("{:?}", store.tokens().await.unwrap());
    for secret in [&admin, &leaked, &old] {
        assert!(!listing.contains(secret.expose_secret()));
        assert!(!listing.contains(&pug_store::token_hash(secret)));
    }
    let ci = store
        .tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == info.id)
        .unwrap();
    assert!(ci.last_used_at_ms.is_some());

    // Revoked by id: the next check fails.
    assert_eq!(
        store.revoke_token(&info.id).await.unwrap().unwrap().name,
        "ci"
    );
    assert_eq!(
        store.check_token(&leaked).await.unwrap(),
        TokenCheck::Unknown
    );
    // The last unexpired admin token stays, and keeps working.
    assert_eq!(
        store.revoke_token("admin").await.unwrap(),
        Err(RevokeRefusal::LastAdmin)
    );
    assert_eq!(store.verify_token(&admin).await.unwrap(), Some(Role::Admin));
    assert_eq!(
        store.revoke_token("nobody").await.unwrap(),
        Err(RevokeRefusal::NoMatch)
    );
    assert!(store.revoke_token("old").await.unwrap().is_ok());
}
