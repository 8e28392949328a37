//! Two revocations racing for the last two admin tokens, on PostgreSQL (where each statement
//! alone would see the other token still there) and on SQLite: one succeeds, and an admin token
//! always remains. PostgreSQL from `PUG_TEST_POSTGRES_URL` (default: the `pugtest` role
//! `.ci/run` creates).

use pug_store::{MasterKey, Role, Store};
use sqlx::Connection;

/// Rounds of: exactly two admin tokens, both revoked at once.
const ROUNDS: usize = 30;

async fn race(store: &Store) {
    let mut survivor = "first".to_owned();
    store.create_token(&survivor, Role::Admin).await.unwrap();
    for round in 0..ROUNDS {
        let other = format!("t{round}");
        store.create_token(&other, Role::Admin).await.unwrap();
        let (ra, rb) = tokio::join!(store.revoke_token(&survivor), store.revoke_token(&other));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let left: Vec<String> = store
            .tokens()
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.role == Role::Admin)
            .map(|t| t.name)
            .collect();
        assert_eq!(
            left.len(),
            1,
            "round {round}: admin tokens left {left:?} after {ra:?} / {rb:?}"
        );
        assert!(ra.is_ok() != rb.is_ok(), "round {round}: {ra:?} / {rb:?}");
        survivor = left.into_iter().next().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_revocations_never_remove_the_last_admin_token_on_postgres() {
    let url = std::env::var("PUG_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://pugtest:pugtest@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}): apt-get install postgresql, start it and \
             create the role as .ci/run does, or set PUG_TEST_POSTGRES_URL"
        )
    });
    let db = format!("pug_token_race_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {db}"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let mut db_url = url::Url::parse(&url).unwrap();
    db_url.set_path(&format!("/{db}"));
    let store = Store::open(db_url.as_str(), MasterKey::generate())
        .await
        .unwrap();
    race(&store).await;
    store.close().await;
    // FORCE: a pooled connection may still be closing.
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_revocations_never_remove_the_last_admin_token_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pug.db").display());
    let store = Store::open_data_dir(dir.path(), &url).await.unwrap();
    race(&store).await;
}
