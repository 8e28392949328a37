//! Sessions against a real SQLite file: embed sessions end with their key or tenant
//! (incarnation), a token id mints one session, and the sweep deletes what can no longer be
//! honoured (security review F10, F13). Row counts are read with SQL directly: a row that is
//! merely not honoured is not a row that is gone.

use pug_store::{EmbedScope, EmbedSessionOutcome, SessionRecord, Store};
use pug_types::{SecretString, TenantId, TenantSpec};
use sqlx::Connection;

async fn open(dir: &std::path::Path) -> Store {
    let url = format!("sqlite://{}", dir.join("pug.db").display());
    Store::open_data_dir(dir, &url).await.unwrap()
}

async fn count(dir: &std::path::Path, table: &str) -> i64 {
    let url = format!("sqlite://{}", dir.join("pug.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&mut c)
        .await
        .unwrap()
}

fn spec() -> TenantSpec {
    serde_json::from_value(serde_json::json!({
        "display_name": "acme", "version": "11.3.0", "replicas": 1, "desired_state": "active",
    }))
    .unwrap()
}

fn person(scope: Option<EmbedScope>, expires_at_ms: i64) -> SessionRecord {
    SessionRecord {
        user: "carol".into(),
        email: "carol@example.com".into(),
        display_name: "Carol".into(),
        scope,
        expires_at_ms,
    }
}

async fn mint(store: &Store, r: &SessionRecord, jti: Option<(&str, i64)>) -> SecretString {
    match store.create_embed_session(r, jti).await.unwrap() {
        EmbedSessionOutcome::Created(id) => id,
        other => panic!("no session minted: {other:?}"),
    }
}

#[tokio::test]
async fn expired_sessions_and_token_ids_are_gone_after_a_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    store.create_tenant(&acme, &spec(), &[]).await.unwrap();
    let (key, _) = store.create_embed_key("webapp", None).await.unwrap();
    let scope = Some(EmbedScope {
        tenant: acme.clone(),
        role: "Viewer".into(),
        key_id: key.id.clone(),
    });
    let now = pug_store::now_ms();
    let live = store
        .create_session(&person(None, now + 60_000))
        .await
        .unwrap();
    store.create_session(&person(None, now - 1)).await.unwrap();
    mint(
        &store,
        &person(scope.clone(), now - 1),
        Some(("old", now - 1)),
    )
    .await;
    let live_embed = mint(
        &store,
        &person(scope, now + 60_000),
        Some(("new", now + 60_000)),
    )
    .await;
    assert_eq!(count(dir.path(), "sessions").await, 4);
    assert_eq!(count(dir.path(), "embed_token_ids").await, 2);

    let swept = store.sweep_sessions(pug_store::now_ms()).await.unwrap();
    assert_eq!(
        (
            swept.expired_sessions,
            swept.orphaned_sessions,
            swept.token_ids
        ),
        (2, 0, 1)
    );
    assert_eq!(count(dir.path(), "sessions").await, 2);
    assert_eq!(count(dir.path(), "embed_token_ids").await, 1);
    assert!(store.session(&live).await.unwrap().is_some());
    assert!(store.session(&live_embed).await.unwrap().is_some());
    // Nothing left to do.
    let again = store.sweep_sessions(pug_store::now_ms()).await.unwrap();
    assert_eq!(again, Default::default());

    // The sweep and logout find rows by index, not by a scan.
    let url = format!("sqlite://{}", dir.path().join("pug.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
            .fetch_all(&mut c)
            .await
            .unwrap();
    for want in [
        "sessions_by_expiry",
        "embed_token_ids_by_expiry",
        "sessions_by_key",
    ] {
        assert!(indexes.iter().any(|i| i == want), "{want} in {indexes:?}");
    }
}

#[tokio::test]
async fn embed_sessions_end_with_their_key_and_their_tenant_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    store.create_tenant(&acme, &spec(), &[]).await.unwrap();
    let (k1, _) = store.create_embed_key("one", None).await.unwrap();
    let (k2, _) = store.create_embed_key("two", None).await.unwrap();
    // Key ids are lowercase: they are part of Grafana logins, which Grafana may fold.
    assert!(
        k1.id.starts_with("ek_")
            && k1.id[3..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let scope = |key: &str| {
        Some(EmbedScope {
            tenant: acme.clone(),
            role: "Editor".into(),
            key_id: key.to_owned(),
        })
    };
    let far = pug_store::now_ms() + 60_000;
    let by_k1 = mint(&store, &person(scope(&k1.id), far), None).await;
    let by_k2 = mint(&store, &person(scope(&k2.id), far), None).await;
    assert_eq!(
        store.session(&by_k1).await.unwrap(),
        Some(person(scope(&k1.id), far))
    );

    // Deleting the key deletes its sessions (and refuses new ones).
    assert!(store.delete_embed_key(&k1.id).await.unwrap());
    assert_eq!(store.session(&by_k1).await.unwrap(), None);
    assert_eq!(count(dir.path(), "sessions").await, 1);
    assert!(matches!(
        store
            .create_embed_session(&person(scope(&k1.id), far), None)
            .await
            .unwrap(),
        EmbedSessionOutcome::NoKey
    ));

    // A tenant deleted and created again under the same id does not honour the old session.
    store.remove_tenant(&acme).await.unwrap();
    assert_eq!(store.session(&by_k2).await.unwrap(), None);
    assert!(matches!(
        store
            .create_embed_session(&person(scope(&k2.id), far), None)
            .await
            .unwrap(),
        EmbedSessionOutcome::NoTenant
    ));
    // (Created in a later millisecond than the first incarnation.)
    std::thread::sleep(std::time::Duration::from_millis(2));
    store.create_tenant(&acme, &spec(), &[]).await.unwrap();
    assert_eq!(store.session(&by_k2).await.unwrap(), None);
    let swept = store.sweep_sessions(pug_store::now_ms()).await.unwrap();
    assert_eq!(swept.orphaned_sessions, 1);
    assert_eq!(count(dir.path(), "sessions").await, 0);
    // The new incarnation gets sessions of its own.
    let fresh = mint(&store, &person(scope(&k2.id), far), None).await;
    assert!(store.session(&fresh).await.unwrap().is_some());
}

#[tokio::test]
async fn a_token_id_mints_one_session_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    store.create_tenant(&acme, &spec(), &[]).await.unwrap();
    let (k1, _) = store.create_embed_key("one", None).await.unwrap();
    let (k2, _) = store.create_embed_key("two", None).await.unwrap();
    let scope = |key: &str| {
        Some(EmbedScope {
            tenant: acme.clone(),
            role: "Viewer".into(),
            key_id: key.to_owned(),
        })
    };
    let far = pug_store::now_ms() + 60_000;
    mint(&store, &person(scope(&k1.id), far), Some(("t-1", far))).await;
    assert!(matches!(
        store
            .create_embed_session(&person(scope(&k1.id), far), Some(("t-1", far)))
            .await
            .unwrap(),
        EmbedSessionOutcome::Replayed
    ));
    // Nothing was stored for the replay.
    assert_eq!(count(dir.path(), "sessions").await, 1);
    // Token ids are per key (each webapp picks its own).
    mint(&store, &person(scope(&k2.id), far), Some(("t-1", far))).await;
    // A password session is not an embed session.
    assert!(store
        .create_session(&person(scope(&k1.id), far))
        .await
        .is_err());
}
