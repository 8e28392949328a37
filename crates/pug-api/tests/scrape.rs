//! Scrapes through pug (`GET /api/v1/prometheus/scrape/…`) and service discovery with
//! `?via=pug`, on the real router, a real SQLite store and real HTTP: the instances are small
//! HTTP servers of the test that record every request they get, listed by an in-memory
//! orchestrator ([`Instances`]). A decoy server that no instance names must never be reached.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pug_orchestrator::{Instance, InstanceSpec, InstanceState, Orchestrator, OrchestratorError};
use pug_store::{Role, Store};
use pug_types::{GrafanaVersion, SecretString, TenantId, TenantSpec};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An orchestrator that runs nothing and lists what the test says runs.
#[derive(Default)]
struct Instances(Mutex<Vec<Instance>>);

#[async_trait]
impl Orchestrator for Instances {
    fn name(&self) -> &'static str {
        "test"
    }
    async fn check_version(&self, _: &GrafanaVersion) -> Result<(), OrchestratorError> {
        Ok(())
    }
    async fn ensure(&self, _: &InstanceSpec) -> Result<Instance, OrchestratorError> {
        Err(OrchestratorError::Engine(
            "the scrape tests' orchestrator starts nothing".into(),
        ))
    }
    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, OrchestratorError> {
        let all = self.0.lock().unwrap();
        Ok(all
            .iter()
            .filter(|i| &i.tenant == tenant)
            .cloned()
            .collect())
    }
    async fn all_instances(&self) -> Result<Vec<Instance>, OrchestratorError> {
        Ok(self.0.lock().unwrap().clone())
    }
    async fn remove(&self, _: &TenantId, _: u32) -> Result<(), OrchestratorError> {
        Ok(())
    }
    async fn archive(&self, _: &TenantId) -> Result<(), OrchestratorError> {
        Ok(())
    }
}

/// What an upstream answers at `/metrics`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Metrics {
    /// 200 with a series naming the upstream, in the format `Accept` asks for.
    Serve,
    /// 500.
    Fail,
    /// A redirect to the decoy's `/metrics`.
    RedirectToDecoy,
    /// Never answers.
    Hang,
}

/// One request an upstream got.
#[derive(Debug, Clone)]
struct Seen {
    path_and_query: String,
    headers: HeaderMap,
}

/// A stand-in for an instance's HTTP server (or the decoy, or the renderer).
#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[derive(Clone)]
struct UpstreamState {
    name: String,
    metrics: Metrics,
    decoy: Option<SocketAddr>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    async fn start(name: &str, metrics: Metrics, decoy: Option<SocketAddr>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = UpstreamState {
            name: name.to_owned(),
            metrics,
            decoy,
            seen: seen.clone(),
        };
        let app = axum::Router::new()
            .fallback(upstream_answer)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path_and_query).collect()
    }
}

async fn upstream_answer(State(state): State<UpstreamState>, request: Request) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        path_and_query: path_and_query.clone(),
        headers: request.headers().clone(),
    });
    if request.uri().path() != "/metrics" {
        // What an open proxy would hand out.
        return format!("{} private page {path_and_query}", state.name).into_response();
    }
    match state.metrics {
        Metrics::Serve => {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let content_type = if accept.contains("application/openmetrics-text") {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            let body = format!(
                "# TYPE grafana_build_info gauge\ngrafana_build_info{{upstream=\"{}\"}} 1\n",
                state.name
            );
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Metrics::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response(),
        Metrics::RedirectToDecoy => (
            StatusCode::FOUND,
            [(
                header::LOCATION,
                format!("http://{}/metrics", state.decoy.unwrap()),
            )],
        )
            .into_response(),
        Metrics::Hang => std::future::pending().await,
    }
}

/// pug's API on a real listener, over a fresh store.
struct Api {
    addr: SocketAddr,
    store: Store,
    instances: Arc<Instances>,
    read: SecretString,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start(renderer: Option<SocketAddr>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("pug.db").display());
        let store = Store::open_data_dir(dir.path(), &url).await.unwrap();
        let instances = Arc::new(Instances::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = pug_config::Config {
            listen: addr,
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = pug_controller::ControllerMetrics::register(&mut registry);
        let controller = pug_controller::Controller::new(
            store.clone(),
            instances.clone(),
            pug_controller::ControllerSettings::from_config(&config),
            metrics,
            None,
        );
        let state = pug_api::ApiState {
            store: store.clone(),
            controller,
            orchestrator: instances.clone(),
            config: Arc::new(config),
            registry: Arc::new(registry),
            renderer_address: renderer.map(|r| r.to_string()),
            roles: vec!["api".into()],
            swarm: None,
            renderer_tenants: None,
        };
        let app = pug_api::router(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let read = store.create_token("prometheus", Role::Read).await.unwrap();
        Self {
            addr,
            store,
            instances,
            read,
            _dir: dir,
        }
    }

    /// A tenant whose replicas run at `upstreams` (replica i at `upstreams[i]`), ready.
    async fn tenant(&self, id: &str, upstreams: &[&Upstream]) {
        let id = TenantId::parse(id).unwrap();
        let spec: TenantSpec = serde_json::from_value(json!({
            "display_name": id.as_str(), "version": "11.3.0",
            "replicas": upstreams.len().max(1), "desired_state": "active"
        }))
        .unwrap();
        self.store.create_tenant(&id, &spec, &[]).await.unwrap();
        let mut status = pug_types::TenantStatus::pending();
        status.phase = pug_types::Phase::Ready;
        status.ready_replicas = upstreams.len() as u32;
        status.endpoints = upstreams.iter().map(|u| u.addr.to_string()).collect();
        self.store.set_status(&id, &status).await.unwrap();
        let mut all = self.instances.0.lock().unwrap();
        for (replica, upstream) in upstreams.iter().enumerate() {
            all.push(Instance {
                tenant: id.clone(),
                replica: replica as u32,
                spec_hash: "h".into(),
                endpoint: upstream.addr.to_string(),
                state: InstanceState::Running,
                started_at_ms: 0,
            });
        }
    }

    /// `GET path` exactly as written (no client normalises it), with `headers`; the status,
    /// the response headers (names lowercased) and the body.
    async fn raw_get(&self, target: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut request = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let head = head.to_ascii_lowercase();
        let body = if head.contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, head, body)
    }

    /// `GET path` with the read token.
    async fn get(&self, target: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let bearer = format!("Bearer {}", self.read.expose_secret());
        let mut all = vec![("Authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        self.raw_get(target, &all).await
    }
}

use pug_types::ExposeSecret;

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// The `error` of a JSON error body.
fn error_of(status: u16, body: &str) -> String {
    let value: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{status}: not a JSON error body ({e}): {body:?}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: no error in {body}"))
        .to_owned()
}

#[tokio::test]
async fn an_instance_metrics_come_through_pug_with_only_accept_and_the_timeout() {
    let acme = Upstream::start("acme-0", Metrics::Serve, None).await;
    let api = Api::start(None).await;
    api.tenant("acme", &[&acme]).await;

    let openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status, head, body) = api
        .get(
            "/api/v1/prometheus/scrape/acme/0",
            &[
                ("Accept", openmetrics),
                ("X-Prometheus-Scrape-Timeout-Seconds", "7"),
                ("Cookie", "grafana_session=stolen"),
                ("X-Forwarded-For", "10.0.0.9"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        body.contains("grafana_build_info{upstream=\"acme-0\"} 1"),
        "{body}"
    );
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "the instance's content type comes back: {head}"
    );

    let seen = acme.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path_and_query, "/metrics");
    let headers = &seen[0].headers;
    assert_eq!(headers[header::ACCEPT], openmetrics);
    assert_eq!(headers["x-prometheus-scrape-timeout-seconds"], "7.000");
    for never in ["authorization", "cookie", "x-forwarded-for"] {
        assert!(headers.get(never).is_none(), "{never} reached the instance");
    }

    // Without Accept, the instance's default format comes back with its type.
    let (status, head, _) = api.get("/api/v1/prometheus/scrape/acme/0", &[]).await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
}

#[tokio::test]
async fn without_a_valid_token_it_is_401_and_reaches_nothing() {
    let acme = Upstream::start("acme-0", Metrics::Serve, None).await;
    let api = Api::start(None).await;
    api.tenant("acme", &[&acme]).await;
    let path = "/api/v1/prometheus/scrape/acme/0";
    for auth in [
        None,
        Some("Bearer pug_not-a-token"),
        Some("Basic cHJvbTpwcm9t"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let (status, head, body) = api.raw_get(path, &headers).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(error_of(status, &body).contains("bearer token"), "{body}");
    }
    assert!(acme.seen().is_empty(), "{:?}", acme.paths());
}

#[tokio::test]
async fn an_unknown_tenant_or_replica_is_404_and_a_stopped_one_503() {
    let acme = Upstream::start("acme-0", Metrics::Serve, None).await;
    let api = Api::start(None).await;
    api.tenant("acme", &[&acme]).await;

    let cases = [
        (
            "/api/v1/prometheus/scrape/nobody/0",
            "tenant nobody does not exist",
        ),
        (
            "/api/v1/prometheus/scrape/acme/1",
            "tenant acme has no replica \"1\" (it has 0)",
        ),
        (
            "/api/v1/prometheus/scrape/acme/x",
            "tenant acme has no replica \"x\"",
        ),
        ("/api/v1/prometheus/scrape/acme/+0", "has no replica \"+0\""),
        (
            "/api/v1/prometheus/scrape/acme",
            "no scrape route at this path",
        ),
        (
            "/api/v1/prometheus/scrape/acme/0/metrics",
            "no scrape route at this path",
        ),
    ];
    for (path, says) in cases {
        let (status, _, body) = api.get(path, &[]).await;
        assert_eq!(status, 404, "{path}: {body}");
        let error = error_of(status, &body);
        assert!(error.contains(says), "{path}: {error}");
    }

    // A tenant without instances (asleep, suspended) says so.
    api.tenant("sleepy", &[]).await;
    let (status, _, body) = api.get("/api/v1/prometheus/scrape/sleepy/0", &[]).await;
    assert_eq!(status, 404);
    assert!(
        error_of(status, &body).contains("no instance now"),
        "{body}"
    );

    // A replica that exited is known but does not run.
    api.instances.0.lock().unwrap()[0].state = InstanceState::Exited {
        reason: "exit code 1: database locked".into(),
    };
    let (status, _, body) = api.get("/api/v1/prometheus/scrape/acme/0", &[]).await;
    assert_eq!(status, 503, "{body}");
    let error = error_of(status, &body);
    assert!(
        error.contains("replica 0 of tenant acme is not running (exit code 1: database locked)"),
        "{error}"
    );
    assert!(acme.seen().is_empty(), "{:?}", acme.paths());
}

#[tokio::test]
async fn a_scrape_cannot_be_steered_to_another_host_path_or_tenant() {
    let decoy = Upstream::start("decoy", Metrics::Serve, None).await;
    let acme = Upstream::start("acme-0", Metrics::Serve, None).await;
    let other0 = Upstream::start("other-0", Metrics::Serve, None).await;
    let other1 = Upstream::start("other-1", Metrics::Serve, None).await;
    let api = Api::start(None).await;
    api.tenant("acme", &[&acme]).await;
    api.tenant("other", &[&other0, &other1]).await;
    let d = decoy.addr.to_string();

    // The other tenant's replica 1 answers for that tenant (so its 404 below means something).
    let (status, _, body) = api.get("/api/v1/prometheus/scrape/other/1", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("upstream=\"other-1\""), "{body}");

    // acme has no replica 1, whoever else does.
    let (status, _, body) = api.get("/api/v1/prometheus/scrape/acme/1", &[]).await;
    assert_eq!(status, 404, "{body}");

    let refused = [
        "/api/v1/prometheus/scrape/acme/0/../../other/1".to_owned(),
        "/api/v1/prometheus/scrape/../scrape/other/1".to_owned(),
        "/api/v1/prometheus/scrape/acme%2F..%2Fother/1".to_owned(),
        "/api/v1/prometheus/scrape/acme/0%2F..%2F1".to_owned(),
        "/api/v1/prometheus/scrape/acme/%2e%2e".to_owned(),
        "/api/v1/prometheus/scrape/%2e%2e/0".to_owned(),
        "/api/v1/prometheus/scrape/..%2F..%2Fadmin/0".to_owned(),
        format!("/api/v1/prometheus/scrape/{d}/0"),
        format!("/api/v1/prometheus/scrape/acme@{d}/0"),
        format!("/api/v1/prometheus/scrape/http%3A%2F%2F{d}%2Fmetrics/0"),
        "/api/v1/prometheus/scrape/acme/0%3Fx=1".to_owned(),
        "/api/v1/prometheus/scrape/acme/0%23x".to_owned(),
        "/api/v1/prometheus/scrape/ACME/0".to_owned(),
        "/api/v1/prometheus/scrape/acme/4294967296".to_owned(),
    ];
    for path in &refused {
        let (status, _, body) = api.get(path, &[]).await;
        assert!(status == 404 || status == 400, "{path}: {status} {body}");
        assert!(
            !body.contains("upstream="),
            "{path} reached an instance: {body}"
        );
        assert!(!body.contains("private page"), "{path}: {body}");
    }

    // What the caller adds is not passed on: a query, another Host, an absolute URI naming
    // the decoy. acme's instance is asked for /metrics and nothing else.
    let scrape = "/api/v1/prometheus/scrape/acme/0";
    let steer = [
        (
            format!("{scrape}?target=http://{d}/metrics&path=/api/admin"),
            None,
        ),
        (scrape.to_owned(), Some(d.clone())),
        (format!("http://{d}{scrape}"), None),
    ];
    for (target, host) in &steer {
        let headers: Vec<(&str, &str)> = host.iter().map(|h| ("Host", h.as_str())).collect();
        let (status, _, body) = api.get(target, &headers).await;
        assert_eq!(status, 200, "{target}: {body}");
        assert!(body.contains("upstream=\"acme-0\""), "{target}: {body}");
    }
    assert_eq!(acme.paths(), vec!["/metrics"; steer.len()]);
    assert!(
        decoy.seen().is_empty(),
        "the decoy was reached: {:?}",
        decoy.paths()
    );
    assert!(other0.seen().is_empty(), "{:?}", other0.paths());
    assert_eq!(
        other1.paths(),
        vec!["/metrics"],
        "only the one legitimate scrape"
    );
}

#[tokio::test]
async fn an_instance_that_fails_redirects_or_hangs_is_a_json_502_or_504() {
    let decoy = Upstream::start("decoy", Metrics::Serve, None).await;
    let failing = Upstream::start("failing", Metrics::Fail, None).await;
    let redirecting =
        Upstream::start("redirecting", Metrics::RedirectToDecoy, Some(decoy.addr)).await;
    let hanging = Upstream::start("hanging", Metrics::Hang, None).await;
    let api = Api::start(None).await;
    api.tenant("failing", &[&failing]).await;
    api.tenant("redirecting", &[&redirecting]).await;
    api.tenant("hanging", &[&hanging]).await;

    let (status, _, body) = api.get("/api/v1/prometheus/scrape/failing/0", &[]).await;
    assert_eq!(status, 502);
    assert!(
        error_of(status, &body)
            .contains("replica 0 of tenant failing answered GET /metrics with 500"),
        "{body}"
    );

    let (status, _, body) = api
        .get("/api/v1/prometheus/scrape/redirecting/0", &[])
        .await;
    assert_eq!(status, 502, "a redirect is not followed: {body}");
    assert!(error_of(status, &body).contains("302"), "{body}");
    assert!(decoy.seen().is_empty(), "the redirect was followed");

    // Prometheus' scrape timeout bounds the wait.
    let (status, _, body) = api
        .get(
            "/api/v1/prometheus/scrape/hanging/0",
            &[("X-Prometheus-Scrape-Timeout-Seconds", "0.3")],
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        error_of(status, &body)
            .contains("replica 0 of tenant hanging did not answer GET /metrics within 300ms"),
        "{body}"
    );

    // Nothing listens at a stopped instance's port any more.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    api.instances.0.lock().unwrap()[0].endpoint = gone_addr.to_string();
    let (status, _, body) = api.get("/api/v1/prometheus/scrape/failing/0", &[]).await;
    assert_eq!(status, 502);
    assert!(
        error_of(status, &body).contains("cannot scrape replica 0 of tenant failing"),
        "{body}"
    );
}

#[tokio::test]
async fn discovery_via_pug_points_every_target_at_pug_and_its_scrape_routes() {
    let acme = Upstream::start("acme-0", Metrics::Serve, None).await;
    let renderer = Upstream::start("renderer", Metrics::Serve, None).await;
    let api = Api::start(Some(renderer.addr)).await;
    api.tenant("acme", &[&acme]).await;
    let targets = "/api/v1/prometheus/targets";
    let groups = |body: &str| -> Vec<Value> { serde_json::from_str(body).unwrap() };

    // Direct (the default): the instance's own address, no metrics path.
    let (status, _, body) = api.get(targets, &[]).await;
    assert_eq!(status, 200, "{body}");
    let direct = groups(&body);
    let grafana = direct
        .iter()
        .find(|g| g["labels"]["role"] == "grafana")
        .unwrap();
    assert_eq!(grafana["targets"], json!([acme.addr.to_string()]));
    assert!(grafana["labels"].get("__metrics_path__").is_none());

    // Through pug: pug at the address the request named, and the scrape route of each.
    let (status, _, body) = api
        .get(
            &format!("{targets}?via=pug"),
            &[("Host", "pug.monitoring:8080")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let through = groups(&body);
    assert_eq!(through.len(), 3, "{through:?}");
    for group in &through {
        assert_eq!(group["targets"], json!(["pug.monitoring:8080"]), "{group}");
    }
    let labels = |role: &str| {
        through
            .iter()
            .find(|g| g["labels"]["role"] == role)
            .unwrap_or_else(|| panic!("no {role} target in {through:?}"))["labels"]
            .clone()
    };
    assert_eq!(
        labels("grafana"),
        json!({
            "role": "grafana", "tenant": "acme", "replica": "0", "version": "11.3.0",
            "backend": "test", "__metrics_path__": "/api/v1/prometheus/scrape/acme/0",
        })
    );
    assert_eq!(
        labels("renderer"),
        json!({"role": "renderer", "__metrics_path__": "/api/v1/prometheus/scrape/renderer"})
    );
    assert_eq!(labels("pug"), json!({"role": "pug"}));

    // Each discovered path is a scrape that works, here, with the same token.
    for role in ["grafana", "renderer"] {
        let path = labels(role)["__metrics_path__"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, _, body) = api.get(&path, &[]).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert_eq!(acme.paths(), vec!["/metrics"]);
    assert_eq!(renderer.paths(), vec!["/metrics"]);

    // `via=direct` is the default spelled out; anything else is a 400 that says why.
    let (status, _, body) = api.get(&format!("{targets}?via=direct"), &[]).await;
    assert_eq!((status, groups(&body)), (200, direct));
    let (status, _, body) = api.get(&format!("{targets}?via=elsewhere"), &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_of(status, &body).contains("unknown variant `elsewhere`"),
        "{body}"
    );
}

#[tokio::test]
async fn without_a_renderer_its_scrape_route_is_404() {
    let api = Api::start(None).await;
    let (status, _, body) = api.get("/api/v1/prometheus/scrape/renderer", &[]).await;
    assert_eq!(status, 404);
    assert!(
        error_of(status, &body).contains("runs no renderer"),
        "{body}"
    );
    let (status, _, body) = api.get("/api/v1/prometheus/targets?via=pug", &[]).await;
    assert_eq!(status, 200);
    let groups: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(
        groups,
        vec![json!({"targets": [api.addr.to_string()], "labels": {"role": "pug"}})]
    );
}
