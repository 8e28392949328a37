//! Attacks on tenant databases (issue 14, hole 14; security review F15) against a real
//! PostgreSQL server (`PUG_TEST_POSTGRES_URL`, started by `.ci/run` with a `pugtest` superuser).

use pug_controller::TenantDatabases;
use pug_types::{ExposeSecret, SecretString, TenantId};
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;

fn url() -> String {
    pug_test_support::postgres::server_url()
}

/// A tenant id and password unique to this run and `tag`.
fn tenant(tag: &str) -> (TenantId, SecretString) {
    let id = TenantId::parse(&format!("dbt-{tag}-{}", std::process::id())).unwrap();
    let password = SecretString::from(format!("pw{tag}{}x", std::process::id()));
    (id, password)
}

/// Connects as `role` with `password` to `database`.
async fn connect_as(
    role: &str,
    password: &SecretString,
    database: &str,
) -> Result<sqlx::PgConnection, sqlx::Error> {
    let opts: PgConnectOptions = url().parse().unwrap();
    opts.username(role)
        .password(password.expose_secret())
        .database(database)
        .connect()
        .await
}

fn is_permission_denied(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42501"))
}

/// Tenant A's Grafana holds A's database credentials. With them it must not open tenant B's
/// database (PostgreSQL grants CONNECT on every new database to PUBLIC).
#[tokio::test]
async fn tenant_role_cannot_connect_to_another_tenants_database() {
    let dbs = TenantDatabases::new(&url(), "disable").unwrap();
    let (a, pa) = tenant("a");
    let (b, pb) = tenant("b");
    assert!(dbs.ensure(&a, &pa).await.unwrap());
    assert!(dbs.ensure(&b, &pb).await.unwrap());
    // Idempotent.
    assert!(!dbs.ensure(&a, &pa).await.unwrap());
    let (name_a, name_b) = (dbs.name_of(&a, &pa), dbs.name_of(&b, &pb));

    // A reaches its own database and may create tables in its public schema.
    let mut own = connect_as(&name_a, &pa, &name_a).await.unwrap();
    sqlx::query("CREATE TABLE dashboard (id int)")
        .execute(&mut own)
        .await
        .unwrap();
    drop(own);
    // A cannot open B's database.
    let err = connect_as(&name_a, &pa, &name_b).await.unwrap_err();
    assert!(is_permission_denied(&err), "A opened B's database: {err}");
    let err = connect_as(&name_b, &pb, &name_a).await.unwrap_err();
    assert!(is_permission_denied(&err), "B opened A's database: {err}");

    dbs.drop(&a, &pa).await.unwrap();
    dbs.drop(&b, &pb).await.unwrap();
    assert!(!dbs.exists(&a, &pa).await.unwrap());
}

/// A tenant deleted without `--purge` keeps its database; a tenant created again with the
/// same id (a new incarnation: new generated password) gets a new, empty database and role,
/// and cannot open the old one.
#[tokio::test]
async fn recreated_tenant_gets_a_fresh_database() {
    let dbs = TenantDatabases::new(&url(), "disable").unwrap();
    let (id, old) = tenant("re");
    assert!(dbs.ensure(&id, &old).await.unwrap());
    let old_name = dbs.name_of(&id, &old);
    let mut conn = connect_as(&old_name, &old, &old_name).await.unwrap();
    sqlx::query("CREATE TABLE secret_dashboards (title text)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    // Deleted without purge: nothing dropped. Created again:
    let new = SecretString::from(format!("pwnew{}x", std::process::id()));
    assert!(dbs.ensure(&id, &new).await.unwrap(), "a new database");
    let new_name = dbs.name_of(&id, &new);
    assert_ne!(old_name, new_name);
    let mut conn = connect_as(&new_name, &new, &new_name).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'secret_dashboards'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 0, "the new tenant sees the old tenant's tables");
    drop(conn);
    let err = connect_as(&new_name, &new, &old_name).await.unwrap_err();
    assert!(
        is_permission_denied(&err),
        "the new tenant opened the old database: {err}"
    );

    dbs.drop(&id, &old).await.unwrap();
    dbs.drop(&id, &new).await.unwrap();
}
