//! `GET /api/v1/renderer/tenants` and `POST /api/v1/renderer/activity` on the real router and a
//! real SQLite store: the swarm renderer service's credential reads the table and reports
//! renders, and nothing else; no other token (admin, read, none, a tenant's renderer token)
//! does either, each refusal a JSON error; a report marks only the table's tenants used.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pug_orchestrator::{Instance, InstanceSpec, Orchestrator, OrchestratorError};
use pug_store::{Role, Store};
use pug_types::{ExposeSecret, GrafanaVersion, RendererGrant, RendererTable, TenantId};

/// An orchestrator that runs nothing.
struct Nothing;

#[async_trait]
impl Orchestrator for Nothing {
    fn name(&self) -> &'static str {
        "test"
    }
    async fn check_version(&self, _: &GrafanaVersion) -> Result<(), OrchestratorError> {
        Ok(())
    }
    async fn ensure(&self, _: &InstanceSpec) -> Result<Instance, OrchestratorError> {
        Err(OrchestratorError::Engine("runs nothing".into()))
    }
    async fn instances(&self, _: &TenantId) -> Result<Vec<Instance>, OrchestratorError> {
        Ok(Vec::new())
    }
    async fn all_instances(&self) -> Result<Vec<Instance>, OrchestratorError> {
        Ok(Vec::new())
    }
    async fn remove(&self, _: &TenantId, _: u32) -> Result<(), OrchestratorError> {
        Ok(())
    }
    async fn archive(&self, _: &TenantId) -> Result<(), OrchestratorError> {
        Ok(())
    }
}

/// The table the test serves, and the tenants reported as rendered.
struct Fixed(Arc<RendererTable>, Arc<Mutex<Vec<String>>>);

impl pug_api::renderer::RendererTableSource for Fixed {
    fn table(&self) -> Arc<RendererTable> {
        self.0.clone()
    }
    fn rendered(&self, tenant: &str) {
        self.1.lock().unwrap().push(tenant.to_owned());
    }
}

async fn api(table: Option<RendererTable>) -> (String, Store, tempfile::TempDir) {
    let (base, store, dir, _) = api_seeing(table).await;
    (base, store, dir)
}

/// [`api`], with the tenants the activity route marked used.
async fn api_seeing(
    table: Option<RendererTable>,
) -> (String, Store, tempfile::TempDir, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pug.db").display());
    let store = Store::open_data_dir(dir.path(), &url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = pug_config::Config {
        listen: addr,
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = pug_controller::ControllerMetrics::register(&mut registry);
    let orchestrator = Arc::new(Nothing);
    let controller = pug_controller::Controller::new(
        store.clone(),
        orchestrator.clone(),
        pug_controller::ControllerSettings::from_config(&config),
        metrics,
        None,
    );
    let state = pug_api::ApiState {
        store: store.clone(),
        controller,
        orchestrator,
        config: Arc::new(config),
        registry: Arc::new(registry),
        renderer_address: None,
        roles: vec!["api".into()],
        swarm: None,
        renderer_tenants: table.map(|t| {
            Arc::new(Fixed(Arc::new(t), seen.clone()))
                as Arc<dyn pug_api::renderer::RendererTableSource>
        }),
    };
    let app = pug_api::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), store, dir, seen)
}

async fn post(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let client = pug_http::builder().build().unwrap();
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn the_services_reports_mark_the_tables_tenants_used_and_no_one_else_reports() {
    let table = RendererTable {
        tenants: vec![RendererGrant {
            tenant: "acme".into(),
            token_sha256: "ab".repeat(32),
            endpoints: vec!["10.0.1.5:3000".into()],
            names: vec![],
        }],
    };
    let (base, store, _dir, seen) = api_seeing(Some(table)).await;
    let url = format!("{base}/api/v1/renderer/activity");
    let credential = store.renderer_credential().await.unwrap();
    let (status, body) = post(
        &url,
        Some(credential.expose_secret()),
        r#"{"tenants":["acme","acme","initech"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!({"recorded": 1, "ignored": 1}));
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["acme".to_owned()],
        "acme once; initech is not in the table, so the credential cannot keep it awake"
    );

    let (status, body) = post(&url, Some(credential.expose_secret()), "{\"tenants\": 3}").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");

    let admin = store.create_token("admin", Role::Admin).await.unwrap();
    for (who, token, want) in [
        ("no token", None, 401),
        ("an admin token", Some(admin.expose_secret()), 403),
    ] {
        let (status, body) = post(&url, token, r#"{"tenants":["acme"]}"#).await;
        assert_eq!(status, want, "{who}: {body}");
        assert!(body["error"].is_string(), "{who}: {body}");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "refused reports mark nothing"
    );
}

async fn get(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let client = pug_http::builder().build().unwrap();
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn only_the_renderer_services_credential_reads_the_table_and_it_reads_nothing_else() {
    let table = RendererTable {
        tenants: vec![RendererGrant {
            tenant: "acme".into(),
            token_sha256: "ab".repeat(32),
            endpoints: vec!["10.0.1.5:3000".into()],
            names: vec![],
        }],
    };
    let (base, store, _dir) = api(Some(table.clone())).await;
    let url = format!("{base}/api/v1/renderer/tenants");
    let credential = store.renderer_credential().await.unwrap();
    assert_eq!(
        store.renderer_credential().await.unwrap().expose_secret(),
        credential.expose_secret(),
        "one credential per store, across calls (and pugs)"
    );
    assert!(
        !store.has_tokens().await.unwrap(),
        "the credential is no operator's token: the first admin token is still made"
    );
    let (status, body) = get(&url, Some(credential.expose_secret())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_value::<RendererTable>(body).unwrap(),
        table
    );

    let admin = store.create_token("admin", Role::Admin).await.unwrap();
    let read = store.create_token("prometheus", Role::Read).await.unwrap();
    let cases = [
        ("no token", None, 401),
        (
            "an unknown token (a tenant's renderer token)",
            Some("0123456789abcdef"),
            401,
        ),
        ("an admin token", Some(admin.expose_secret()), 403),
        ("a read token", Some(read.expose_secret()), 403),
    ];
    for (who, token, want) in cases {
        let (status, body) = get(&url, token).await;
        assert_eq!(status, want, "{who}: {body}");
        assert!(body["error"].is_string(), "{who}: a JSON error, got {body}");
    }
    // The credential reads nothing else.
    for path in [
        "/api/v1/tenants",
        "/api/v1/tokens",
        "/api/v1/status",
        "/metrics",
    ] {
        let (status, body) = get(&format!("{base}{path}"), Some(credential.expose_secret())).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("renderer"),
            "{body}"
        );
    }

    // A pug without a renderer service serves no table (a 404 that says why).
    let (base, store, _dir) = api(None).await;
    let credential = store.renderer_credential().await.unwrap();
    let (status, body) = get(
        &format!("{base}/api/v1/renderer/tenants"),
        Some(credential.expose_secret()),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("renderer.swarm.replicas"),
        "{body}"
    );
}
