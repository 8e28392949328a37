//! The gateway's tables on a real PostgreSQL server (the same queries as on SQLite):
//! users, memberships, sessions with and without a tenant scope, embed keys, the cookie key and
//! the routing-table query. On the tests' server ([`pug_test_support::postgres`]).

use pug_store::{EmbedScope, EmbedSessionOutcome, MasterKey, SessionRecord, Store};
use pug_types::{ExposeSecret, TenantId, TenantSpec};

#[tokio::test]
async fn gateway_tables_work_on_postgres() {
    let db = format!("pug_gateway_test_{}", std::process::id());
    let db_url = pug_test_support::postgres::fresh_database(&db).await;
    let store = Store::open(&db_url, MasterKey::generate()).await.unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let spec: TenantSpec = serde_json::from_value(serde_json::json!({
        "display_name": "acme", "version": "11.3.0", "replicas": 1, "desired_state": "active",
    }))
    .unwrap();
    store.create_tenant(&acme, &spec, &[]).await.unwrap();
    store
        .create_user("alice", "alice@example.com", "Alice", "$argon2id$fake")
        .await
        .unwrap();
    assert!(store
        .create_user("alice", "x@example.com", "x", "h")
        .await
        .is_err());
    store.grant("alice", &acme, "Editor").await.unwrap();
    store.grant("alice", &acme, "Admin").await.unwrap();
    assert_eq!(
        store.membership("alice", &acme).await.unwrap().as_deref(),
        Some("Admin")
    );
    assert_eq!(store.memberships_of("alice").await.unwrap().len(), 1);
    assert!(store
        .grant("alice", &TenantId::parse("nosuch").unwrap(), "Viewer")
        .await
        .is_err());
    let users = store.users().await.unwrap();
    assert_eq!(users[0].memberships["acme"], "Admin");

    let record = SessionRecord {
        user: "alice".into(),
        email: "alice@example.com".into(),
        display_name: "Alice".into(),
        scope: None,
        expires_at_ms: pug_store::now_ms() + 60_000,
    };
    let id = store.create_session(&record).await.unwrap();
    assert_eq!(store.session(&id).await.unwrap(), Some(record));
    store.delete_session(&id).await.unwrap();
    assert_eq!(store.session(&id).await.unwrap(), None);

    // Embed sessions: bound to their key, token ids used once, swept when orphaned or expired.
    let (minter, _) = store.create_embed_key("minter", None).await.unwrap();
    let embed = |expires_at_ms| SessionRecord {
        user: format!("embed:{}:carol", minter.id),
        email: format!("carol+{}@embed.invalid", minter.id),
        display_name: "Carol".into(),
        scope: Some(EmbedScope {
            tenant: acme.clone(),
            role: "Viewer".into(),
            key_id: minter.id.clone(),
        }),
        expires_at_ms,
    };
    let far = pug_store::now_ms() + 60_000;
    let EmbedSessionOutcome::Created(live) = store
        .create_embed_session(&embed(far), Some(("jti-1", far)))
        .await
        .unwrap()
    else {
        panic!("the first use of a jti mints a session")
    };
    assert_eq!(store.session(&live).await.unwrap(), Some(embed(far)));
    assert!(matches!(
        store
            .create_embed_session(&embed(far), Some(("jti-1", far)))
            .await
            .unwrap(),
        EmbedSessionOutcome::Replayed
    ));
    let EmbedSessionOutcome::Created(_) = store
        .create_embed_session(&embed(pug_store::now_ms() - 1), None)
        .await
        .unwrap()
    else {
        panic!("a session without a jti is minted")
    };
    let swept = store.sweep_sessions(pug_store::now_ms()).await.unwrap();
    assert_eq!((swept.expired_sessions, swept.token_ids), (1, 0));
    assert!(store.delete_embed_key(&minter.id).await.unwrap());
    assert_eq!(store.session(&live).await.unwrap(), None);

    let (any, key) = store.create_embed_key("webapp", None).await.unwrap();
    let (scoped, _) = store
        .create_embed_key("acme app", Some(&acme))
        .await
        .unwrap();
    let keys = store.embed_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    let found = keys.iter().find(|(k, _)| k.id == any.id).unwrap();
    assert_eq!(found.1.expose_secret(), key.expose_secret());
    assert_eq!(
        keys.iter()
            .find(|(k, _)| k.id == scoped.id)
            .unwrap()
            .0
            .tenant
            .as_deref(),
        Some("acme")
    );
    assert!(store.delete_embed_key(&scoped.id).await.unwrap());

    let k1 = store.gateway_cookie_key().await.unwrap();
    let k2 = store.gateway_cookie_key().await.unwrap();
    assert_eq!(k1.expose_secret(), k2.expose_secret());
    assert_eq!(store.tenant_statuses().await.unwrap().len(), 1);
    assert!(store.tenant_status(&acme).await.unwrap().is_some());

    assert!(store.revoke("alice", &acme).await.unwrap());
    store.delete_user("alice").await.unwrap();
    store.close().await;
    pug_test_support::postgres::drop_database(&db).await;
}
