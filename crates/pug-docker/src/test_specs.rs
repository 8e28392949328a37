//! Instance specs for the spec builders' unit tests and snapshots (compiled for tests only).
//!
//! Owns: two fixed tenants, a minimal one and one that uses every part of an instance spec
//! (PostgreSQL, rendering, provisioning with credentials, overrides), and the list of secret
//! values each holds, so tests can show that none reaches what pug hands Docker.
//!
//! Must not: read the clock, the environment or randomness: snapshots must be the same on
//! every machine. The secret values are made up and distinctive, so a search for them in a
//! serialized spec cannot match by accident.

use pug_orchestrator::settings::RenderingSettings;
use pug_orchestrator::{
    DatabaseSettings, GatewayTrust, InstanceSecrets, InstanceSpec, Provisioning,
};
use pug_types::{
    DashboardSpec, DatasourceSpec, ExposeSecret, GrafanaVersion, Overrides, SecretString, TenantId,
};

/// Which fixed tenant.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tenant {
    /// Path routing, SQLite, no renderer, nothing provisioned.
    Minimal,
    /// Host routing, PostgreSQL, a renderer, a datasource with credentials, a dashboard and
    /// an override.
    Full,
}

/// The spec of replica 0 of `tenant`.
pub(crate) fn instance_spec(tenant: Tenant) -> InstanceSpec {
    match tenant {
        Tenant::Minimal => InstanceSpec {
            tenant: TenantId::parse("acme").unwrap(),
            replica: 0,
            version: GrafanaVersion::parse("11.3.0").unwrap(),
            root_url: "http://127.0.0.1:8080/t/acme/".into(),
            serve_from_sub_path: true,
            gateway: GatewayTrust::Addresses(vec!["172.18.0.1".into()]),
            port: 20001,
            secrets: InstanceSecrets {
                admin_password: SecretString::from("ADMIN-PASSWORD-VALUE-acme"),
                secret_key: SecretString::from("SECRET-KEY-VALUE-acme"),
                renderer_token: None,
            },
            database: DatabaseSettings::Sqlite,
            rendering: None,
            plugin_preinstall: false,
            data_source_proxy_whitelist: Vec::new(),
            overrides: Overrides::default(),
            provisioning: Provisioning::default(),
        },
        Tenant::Full => {
            let mut overrides = Overrides::default();
            overrides.set("server.enable_gzip=true").unwrap();
            let datasource = DatasourceSpec {
                name: "Metrics".into(),
                kind: "prometheus".into(),
                url: "http://prometheus.example:9090".into(),
                access: "proxy".into(),
                is_default: true,
                basic_auth_user: Some("reader".into()),
                json_data: serde_json::Map::from_iter([(
                    "httpMethod".to_owned(),
                    serde_json::Value::from("POST"),
                )]),
                secure_fields: vec!["basicAuthPassword".into()],
            };
            InstanceSpec {
                tenant: TenantId::parse("bobs-shop").unwrap(),
                replica: 0,
                version: GrafanaVersion::parse("12.1.0").unwrap(),
                root_url: "https://bobs-shop.grafana.example/".into(),
                serve_from_sub_path: false,
                gateway: GatewayTrust::Addresses(vec!["10.0.0.0/8".into()]),
                port: 20002,
                secrets: InstanceSecrets {
                    admin_password: SecretString::from("ADMIN-PASSWORD-VALUE-bob"),
                    secret_key: SecretString::from("SECRET-KEY-VALUE-bob"),
                    renderer_token: Some(SecretString::from("RENDERER-TOKEN-VALUE-bob")),
                },
                database: DatabaseSettings::Postgres {
                    host: "db.example:5432".into(),
                    name: "grafana_bobs_shop".into(),
                    user: "grafana_bobs_shop".into(),
                    password: SecretString::from("DB-PASSWORD-VALUE-bob"),
                    ssl_mode: "require".into(),
                },
                rendering: Some(RenderingSettings {
                    server_url: "http://pug.example:8081/render".into(),
                    callback_url: "http://172.18.0.1:20002/".into(),
                }),
                plugin_preinstall: true,
                data_source_proxy_whitelist: vec!["prometheus.example:9090".into()],
                overrides,
                provisioning: Provisioning {
                    datasources: vec![(
                        datasource,
                        vec![(
                            "basicAuthPassword".into(),
                            SecretString::from("DATASOURCE-PASSWORD-VALUE-bob"),
                        )],
                    )],
                    dashboards: vec![DashboardSpec {
                        name: "overview".into(),
                        json: serde_json::json!({ "title": "Overview", "panels": [] }),
                    }],
                },
            }
        }
    }
}

/// Every secret value `spec` holds.
pub(crate) fn secret_values(spec: &InstanceSpec) -> Vec<String> {
    let mut out = vec![
        spec.secrets.admin_password.expose_secret().to_owned(),
        spec.secrets.secret_key.expose_secret().to_owned(),
    ];
    if let Some(token) = &spec.secrets.renderer_token {
        out.push(token.expose_secret().to_owned());
    }
    if let DatabaseSettings::Postgres { password, .. } = &spec.database {
        out.push(password.expose_secret().to_owned());
    }
    for (_, secure) in &spec.provisioning.datasources {
        out.extend(secure.iter().map(|(_, v)| v.expose_secret().to_owned()));
    }
    out
}
