//! What the store's integration tests share: a story run on a fresh SQLite file and on a
//! fresh PostgreSQL database (`PUG_TEST_POSTGRES_URL`, default: the `pugtest` role `.ci/run`
//! creates), so that every behaviour is checked on both dialects.
#![allow(dead_code)]

use std::future::Future;

use pug_store::{MasterKey, Store};
use sqlx::Connection;

/// Runs `story` on a store in a fresh temporary SQLite file.
pub async fn on_sqlite<F, Fut>(story: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pug.db").display());
    let store = Store::open_data_dir(dir.path(), &url).await.unwrap();
    story(store).await;
}

/// Runs `story` on a store in a fresh PostgreSQL database `pug_<name>_<pid>`, dropped after.
pub async fn on_postgres<F, Fut>(name: &str, story: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = std::env::var("PUG_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://pugtest:pugtest@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}): apt-get install postgresql, start it and \
             create the role as .ci/run does, or set PUG_TEST_POSTGRES_URL"
        )
    });
    let db = format!("pug_{name}_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let mut db_url = url::Url::parse(&url).unwrap();
    db_url.set_path(&format!("/{db}"));
    let store = Store::open(db_url.as_str(), MasterKey::generate())
        .await
        .unwrap();
    story(store.clone()).await;
    store.close().await;
    // FORCE: a pooled connection may still be closing.
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
