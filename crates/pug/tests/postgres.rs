//! Tenant databases on a real PostgreSQL server: a database and role per tenant, replicas > 1,
//! and `--purge` as the only way to drop them.

mod support;

use std::time::Duration;

use support::Pug;

/// The PostgreSQL server the tests use (`.ci/run` starts one with a `pugtest` superuser).
fn postgres_url() -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Reachable, or fail with how to provide it.
    rt.block_on(pug_test_support::postgres::admin());
    pug_test_support::postgres::server_url()
}

fn database_exists(url: &str, name: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap()
    })
}

/// The database a tenant's Grafana uses, as the stand-in reports its settings.
fn database_of(pug: &Pug, id: &str) -> String {
    let t = pug.tenant(id);
    let endpoint = t["status"]["endpoints"][0].as_str().unwrap().to_owned();
    let (_, settings) =
        support::http_get(&format!("http://{endpoint}/t/{id}/api/standin/settings")).unwrap();
    let settings: serde_json::Value = serde_json::from_str(&settings).unwrap();
    settings["sections"]["database"]["name"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Tenant ids unique to this run, so reruns on one server do not collide.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

#[test]
fn tenants_get_their_own_postgres_database() {
    let url = postgres_url();
    let pug = Pug::start((21500, 21549), &[("PUG_GRAFANA_DATABASE_URL", &url)]);
    let ha = unique("ha");
    pug.ok(&[
        "tenant",
        "create",
        &ha,
        "--version",
        "11.3.0",
        "--replicas",
        "2",
        "--wait",
        "--timeout",
        "60",
    ]);
    let t = pug.tenant(&ha);
    assert_eq!(t["status"]["ready_replicas"], 2);

    // Both replicas use the tenant's own database (named per incarnation: `pug_<id>_<hex>`)
    // with the tenant's own role; its password is nowhere in the API's answers.
    let endpoint = t["status"]["endpoints"][1].as_str().unwrap().to_owned();
    let (_, settings) =
        support::http_get(&format!("http://{endpoint}/t/{ha}/api/standin/settings")).unwrap();
    let settings: serde_json::Value = serde_json::from_str(&settings).unwrap();
    let db = database_of(&pug, &ha);
    assert!(
        db.starts_with(&format!("pug_{}_", ha.replace('-', "_"))),
        "{db}"
    );
    assert!(database_exists(&url, &db));
    assert_eq!(settings["sections"]["database"]["type"], "postgres");
    assert_eq!(settings["sections"]["database"]["name"], db.as_str());
    assert_eq!(settings["sections"]["database"]["user"], db.as_str());
    assert_eq!(settings["sections"]["database"]["password"]["set"], true);
    assert!(!t.to_string().contains("database_password"));

    // Scaling down and up keeps working.
    pug.ok(&["tenant", "update", &ha, "--replicas", "1", "--wait"]);
    assert_eq!(pug.instances().len(), 1);

    // Delete keeps the database; delete --purge drops it.
    pug.ok(&["tenant", "delete", &ha]);
    support::wait_for(Duration::from_secs(30), "the tenant to be deleted", || {
        (!pug.cli(&["tenant", "show", &ha]).status.success()).then_some(())
    });
    assert!(
        database_exists(&url, &db),
        "delete without --purge keeps the database"
    );

    let gone = unique("gone");
    pug.ok(&["tenant", "create", &gone, "--version", "11.3.0", "--wait"]);
    let gone_db = database_of(&pug, &gone);
    assert!(database_exists(&url, &gone_db));
    pug.ok(&["tenant", "delete", &gone, "--purge"]);
    support::wait_for(
        Duration::from_secs(30),
        "the database to be dropped",
        || (!database_exists(&url, &gone_db)).then_some(()),
    );

    // Clean up what this run left on the shared server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS \"{db}\""),
        ] {
            sqlx::query(&sql).execute(&mut conn).await.unwrap();
        }
    });
}

#[test]
fn replicas_need_a_shared_database() {
    let pug = Pug::start((21550, 21559), &[]);
    let err = pug.fails(&[
        "tenant",
        "create",
        "ha",
        "--version",
        "11.3.0",
        "--replicas",
        "3",
    ]);
    assert!(err.contains("grafana_database.url"), "{err}");
}
