//! The PostgreSQL server the tests use: `PUG_TEST_POSTGRES_URL`, default the `pugtest`
//! superuser `.ci/run` creates, and fresh databases on it, one per test.
//!
//! Owns: finding the server (failing with install steps when it does not answer: never a silent
//! pass) and creating and dropping a test's database.
//!
//! Must not: know pug's schema (the store's migrations make it).

use sqlx::Connection;

/// The server's URL when `PUG_TEST_POSTGRES_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://pugtest:pugtest@127.0.0.1:5432/postgres";

/// The URL of the server (its `postgres` database), as the tests' superuser.
pub fn server_url() -> String {
    std::env::var("PUG_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into())
}

/// A connection to the server as its superuser; panics with how to provide one.
pub async fn admin() -> sqlx::PgConnection {
    let url = server_url();
    sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}): install and start it \
             (`apt-get install postgresql && service postgresql start`, then create the role as \
             .ci/run does) or set PUG_TEST_POSTGRES_URL"
        )
    })
}

/// The URL of database `name` on the server.
pub fn database_url(name: &str) -> String {
    let mut url = url::Url::parse(&server_url()).expect("PUG_TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Creates database `name`, empty (dropping one a killed earlier run left), and returns its URL.
pub async fn fresh_database(name: &str) -> String {
    let mut admin = admin().await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(&sql)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    database_url(name)
}

/// Drops database `name` (FORCE: a pooled connection may still be closing).
pub async fn drop_database(name: &str) {
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    sqlx::query(&sql)
        .execute(&mut admin().await)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
