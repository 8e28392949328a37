//! Attacks on tenant settings (issue 14, holes 2, 3 (Grafana side), 13 and 14), performed
//! against the real `pug` binary with the Grafana stand-in:
//! - overrides that reach a reserved setting under another spelling of its `GF_` variable;
//! - a person signed in as `admin` (or with Grafana's default admin email) becoming the
//!   tenant's Grafana server admin;
//! - settings and provisioning values that make Grafana read pug's files or environment;
//! - secret-bearing overrides, which pug would keep and show in clear;
//! - a tenant re-created with the id of a deleted one inheriting its PostgreSQL database.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{self, Pug};

/// Instance ports of this module's pugs (one range per test, so tests run in parallel).
const PORTS_OVERRIDES: (u16, u16) = (24000, 24009);
const PORTS_ADMIN: (u16, u16) = (24010, 24019);
const PORTS_EXPANSION: (u16, u16) = (24020, 24029);
const PORTS_POSTGRES: (u16, u16) = (24030, 24049);

fn create(pug: &Pug, body: Value) -> (u16, Value) {
    pug.api("POST", "/api/v1/tenants", Some(body))
}

/// The security review's F2: on docker and swarm every override becomes `GF_<SECTION>_<KEY>`
/// and the container keeps the last duplicate, so `auth.proxy_header_name=X-Pwn` replaced
/// pug's `GF_AUTH_PROXY_HEADER_NAME` (and any Viewer sending `X-Pwn: admin` was server admin).
/// Every spelling of a reserved variable is refused with a 422, and nothing is created.
#[test]
fn override_spelled_as_another_gf_variable_cannot_reach_a_reserved_setting() {
    let pug = Pug::start(PORTS_OVERRIDES, &[]);
    for (i, assignment) in [
        "auth.proxy_header_name=X-Pwn",
        "auth.proxy_whitelist=0.0.0.0/0",
        "auth_proxy.whitelist=0.0.0.0/0",
        "auth_proxy.enabled=false",
        "server.root.url=http://evil.example/",
        "security.admin.user=x",
        "security.admin.email=x@example.com",
        "rendering_server.url=https://evil.example/",
        "database_ssl.mode=disable",
        "server.static_root_path=/",
        "panels.disable_sanitize_html=true",
        "security.csrf_always_check=false",
        "security.data_source_proxy_whitelist=evil:80",
        "auth.login.cookie_name=grafana_session_other",
        "server.root_url__file=/etc/passwd",
        "install.plugins=https://evil.example/p.zip;p",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("f2-{i}");
        let (status, body) = create(
            &pug,
            json!({"id": id, "version": "11.3.0", "set": [assignment]}),
        );
        assert_eq!(status, 422, "{assignment} was accepted: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("managed by pug") || error.contains("read the setting from a file"),
            "{assignment}: {error}"
        );
        let (status, _) = pug.api("GET", &format!("/api/v1/tenants/{id}"), None);
        assert_eq!(status, 404, "{assignment}: nothing was created");
    }
    // An ordinary override still works, and an update cannot sneak a spelling in either.
    pug.ok(&[
        "tenant",
        "create",
        "f2ok",
        "--version",
        "11.3.0",
        "--set",
        "server.enable_gzip=true",
    ]);
    let (status, body) = pug.api(
        "PATCH",
        "/api/v1/tenants/f2ok",
        Some(json!({"set": ["auth_proxy.header_name=X-Pwn"]})),
    );
    assert_eq!(status, 422, "{body}");
}

/// The security review's F3, Grafana side: the gateway sends `X-WEBAUTH-USER: <login>` and
/// `X-WEBAUTH-EMAIL`; Grafana finds an existing account by login or email, and the built-in
/// admin was login `admin`, email `admin@localhost`. A request from the gateway's address
/// naming `admin` (a pug user or embed subject called so, or Grafana's default admin email)
/// must not be the tenant's Grafana server admin.
#[test]
fn person_named_admin_is_not_the_grafana_server_admin() {
    let pug = Pug::start(PORTS_ADMIN, &[]);
    pug.ok(&[
        "tenant",
        "create",
        "acme",
        "--version",
        "11.3.0",
        "--wait",
        "--timeout",
        "60",
    ]);
    let t = pug.tenant("acme");
    let endpoint = t["status"]["endpoints"][0].as_str().unwrap().to_owned();
    let url = format!("http://{endpoint}/t/acme/api/user");
    for (user, email) in [
        ("admin", "carol@example.com"),
        ("Admin", "carol@example.com"),
        ("carol", "admin@localhost"),
        ("carol", "ADMIN@localhost"),
    ] {
        // This test runs on 127.0.0.1, which the process backend whitelists: it speaks as
        // the gateway would for a person with that login and email.
        let out = std::process::Command::new("curl")
            .args(["-s", "-H", &format!("X-WEBAUTH-USER: {user}")])
            .args(["-H", &format!("X-WEBAUTH-EMAIL: {email}")])
            .args(["-H", "X-WEBAUTH-ROLE: Viewer", &url])
            .output()
            .expect("curl runs");
        let body: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(
            body["isGrafanaAdmin"], false,
            "{user} / {email} became the Grafana server admin: {body}"
        );
    }
    // The admin account exists, under a login nobody can sign in with through pug.
    let (_, settings) =
        support::http_get(&format!("http://{endpoint}/t/acme/api/standin/settings")).unwrap();
    let settings: Value = serde_json::from_str(&settings).unwrap();
    let admin = settings["sections"]["security"]["admin_user"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(admin, "pug+admin", "{settings}");
    let email = settings["sections"]["security"]["admin_email"]
        .as_str()
        .unwrap_or_default();
    assert!(email.ends_with("@pug.invalid"), "{email}");
}

/// The security review's F14: Grafana expands `$__file{…}`, `$__env{…}` and `${VAR}` in ini
/// values and provisioning values, so a tenant could read `master.key` (process backend) or
/// any file and variable of its container into a setting it can see. Refused with a 422
/// naming the field, unless the operator allows expansion; secret-bearing overrides are
/// refused too (overrides are kept and shown in clear).
#[test]
fn setting_values_cannot_read_pugs_files_or_environment() {
    let pug = Pug::start(PORTS_EXPANSION, &[]);
    let key = pug.data.join("master.key").display().to_string();
    for (i, assignment) in [
        format!("server.domain=$__file{{{key}}}"),
        "server.domain=$__env{PUG_MASTER_KEY}".to_owned(),
        "server.domain=$__vault{kv:secret}".to_owned(),
        "server.domain=${HOME}".to_owned(),
        "smtp.from_name=$HOME".to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = create(
            &pug,
            json!({"id": format!("f14-{i}"), "version": "11.3.0", "set": [assignment]}),
        );
        assert_eq!(status, 422, "{assignment} was accepted: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("allow_setting_expansion"),
            "{body}"
        );
    }
    let datasource = |field: &str, value: &str| {
        let mut ds = json!({"name": "prom", "type": "prometheus", "url": "http://prom:9090"});
        match field {
            "url" => ds["url"] = json!(format!("http://prom:9090/{value}")),
            "json_data" => ds["json_data"] = json!({"httpHeaderName1": value}),
            _ => ds["secure_json_data"] = json!({"httpHeaderValue1": value}),
        }
        ds
    };
    for (i, (field, value)) in [
        ("url", format!("$__file{{{key}}}")),
        ("json_data", "$PUG_MASTER_KEY".to_owned()),
        ("secure_json_data", "${PUG_TOKEN}".to_owned()),
        ("secure_json_data", "$__env{PUG_DATABASE_URL}".to_owned()),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = create(
            &pug,
            json!({"id": format!("f14-ds-{i}"), "version": "11.3.0",
                   "datasources": [datasource(field, &value)]}),
        );
        assert_eq!(status, 422, "{field} {value} was accepted: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(field), "the error names the field: {error}");
    }
    // `$$` is Grafana's literal `$` in provisioning: a password with a dollar still works.
    let (status, body) = create(
        &pug,
        json!({"id": "f14-ok", "version": "11.3.0",
               "datasources": [datasource("secure_json_data", "pa$$word")]}),
    );
    assert_eq!(status, 201, "{body}");
    for assignment in [
        "smtp.password=hunter2",
        "auth.generic_oauth.client_secret=s3cret",
    ] {
        let (status, body) = create(
            &pug,
            json!({"id": "f14-secret", "version": "11.3.0", "set": [assignment]}),
        );
        assert_eq!(status, 422, "{assignment}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("not supported as overrides yet"),
            "{body}"
        );
    }
}

/// The security review's F15: deleting a tenant without `--purge` kept its database, and a
/// tenant created again with the same id was given it (its dashboards, users, annotations).
/// Each incarnation gets its own database and role now.
#[test]
fn recreated_tenant_does_not_inherit_the_deleted_tenants_database() {
    let url = pug_test_support::postgres::server_url();
    let pug = Pug::start(PORTS_POSTGRES, &[("PUG_GRAFANA_DATABASE_URL", &url)]);
    let id = format!("reborn-{}", std::process::id());
    let database_of = |pug: &Pug| {
        pug.ok(&[
            "tenant",
            "create",
            &id,
            "--version",
            "11.3.0",
            "--wait",
            "--timeout",
            "60",
        ]);
        let t = pug.tenant(&id);
        let endpoint = t["status"]["endpoints"][0].as_str().unwrap().to_owned();
        let (_, settings) =
            support::http_get(&format!("http://{endpoint}/t/{id}/api/standin/settings")).unwrap();
        let settings: Value = serde_json::from_str(&settings).unwrap();
        let db = &settings["sections"]["database"];
        (
            db["name"].as_str().unwrap().to_owned(),
            db["user"].as_str().unwrap().to_owned(),
        )
    };
    let (first_db, first_role) = database_of(&pug);
    pug.ok(&["tenant", "delete", &id]);
    support::wait_for(Duration::from_secs(30), "the tenant to be deleted", || {
        (!pug.cli(&["tenant", "show", &id]).status.success()).then_some(())
    });
    let (second_db, second_role) = database_of(&pug);
    assert_ne!(first_db, second_db, "the new tenant got the old database");
    assert_ne!(first_role, second_role, "the new tenant got the old role");
    pug.ok(&["tenant", "delete", &id, "--purge"]);
    // Clean up: the first incarnation's database stayed behind as its archive.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{first_db}\" WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS \"{first_role}\""),
        ] {
            sqlx::query(&sql).execute(&mut conn).await.unwrap();
        }
    });
}
