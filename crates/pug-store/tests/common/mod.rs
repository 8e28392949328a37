//! What the store's integration tests share: a story run on a fresh SQLite file and on a
//! fresh PostgreSQL database ([`pug_test_support::postgres`]), so that every behaviour is checked on both dialects.
#![allow(dead_code)]

use std::future::Future;

use pug_store::{MasterKey, Store};

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
    let db = format!("pug_{name}_{}", std::process::id());
    let url = pug_test_support::postgres::fresh_database(&db).await;
    let store = Store::open(&url, MasterKey::generate()).await.unwrap();
    story(store.clone()).await;
    store.close().await;
    pug_test_support::postgres::drop_database(&db).await;
}
