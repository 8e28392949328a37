//! HTTP server: the one [`Router`] (built in [`app_routes`]) and its handlers, plus the sub-path
//! dispatch in front of it ([`router`]).
//!
//! Grafana's surface (grafana/grafana `pkg/api/http_server.go`, research/multitenant.md §2):
//! `GET|HEAD /api/health`, `GET|HEAD /healthz`, `GET /metrics` (answered at the root and under
//! the sub path, as Grafana's middleware does), `GET /` (page), `GET /api/user`, and the Grafana
//! Live WebSocket `GET /api/live/ws` (echo here), and Grafana's `GET /render/…` which calls the
//! configured remote renderer (`crate::rendering`). Stand-in only: `GET /api/standin/headers`,
//! `GET /api/standin/settings` and `GET /api/standin/provisioning`.
//!
//! Sub path: with `serve_from_sub_path = true` and a path in `root_url`, requests under that path
//! are served with the prefix removed. Real Grafana removes the prefix with a plain
//! `strings.TrimPrefix` (pkg/web), so it also answers un-prefixed paths; the stand-in instead
//! answers 404 outside the sub path (except the health/metrics endpoints) so tests notice a
//! proxy that forgets the prefix. `[standin] strict_sub_path = false` restores Grafana's exact
//! behaviour.
//!
//! To add routes (e.g. render-test pages), add a module and `.merge()` its `Router` in
//! [`app_routes`]; paths there are relative to the sub path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tower::ServiceExt as _;

use crate::auth::{self, Identity, User};
use crate::database;
use crate::logging;
use crate::settings::{Mode, Settings, COMMIT};

/// Shared, read-only state of a running stand-in.
pub struct AppState {
    pub settings: Settings,
    /// sha256 (hex) of the admin password the database was seeded with.
    pub admin_password_sha256: String,
    pub started: SystemTime,
}

pub type Shared = Arc<AppState>;

/// The whole HTTP service: sub-path dispatch in front of [`app_routes`].
pub fn router(state: Shared) -> Router {
    let app = app_routes(state.clone());
    Router::new().fallback(move |req: Request| dispatch(state.clone(), app.clone(), req))
}

/// Every route, with paths relative to the sub path. This is the one place to extend.
pub fn app_routes(state: Shared) -> Router {
    // Routes that go through authentication (Grafana's context handler).
    let authed = Router::new()
        .route("/", get(index))
        .route("/api/user", get(api_user))
        .route("/api/live/ws", get(live_ws))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    // Answered before authentication, as Grafana's health/metrics middleware are.
    Router::new()
        .route("/api/health", get(api_health))
        .route("/healthz", get(|| async { "Ok" }))
        .route("/metrics", get(metrics))
        .route("/api/standin/headers", get(standin_headers))
        .route("/api/standin/settings", get(standin_settings))
        .route(
            "/api/standin/provisioning",
            get(crate::provisioning::report),
        )
        .route("/render/{*path}", get(crate::rendering::render))
        .merge(authed)
        .with_state(state)
        .merge(crate::render_pages::routes())
}

const ROOT_ENDPOINTS: [&str; 3] = ["/api/health", "/healthz", "/metrics"];

async fn dispatch(state: Shared, app: Router, mut req: Request) -> Response {
    let s = &state.settings;
    let sub = s.app_sub_url.as_str();
    if s.serve_from_sub_path && !sub.is_empty() {
        let path = req.uri().path();
        if path == sub || path.starts_with(&format!("{sub}/")) {
            let rest = match &path[sub.len()..] {
                "" => "/",
                r => r,
            };
            let pq = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_string(),
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = pq.parse().ok();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        } else if s.standin.strict_sub_path && !ROOT_ENDPOINTS.contains(&path) {
            return not_found(req.uri().clone()).await;
        }
    }
    match app.oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// Grafana's 404: JSON for `/api/…`, a page otherwise.
async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") || uri.path().contains("/api/") {
        (StatusCode::NOT_FOUND, Json(json!({"message": "Not found"}))).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Html("<!doctype html><title>Grafana</title><h1>Page not found</h1>\n"),
        )
            .into_response()
    }
}

/// Authentication middleware: puts the [`Identity`] in the request extensions; a refused auth
/// proxy request is answered here and never reaches a handler as that user.
async fn authenticate(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let identity = auth::authenticate(
        &state.settings,
        &state.admin_password_sha256,
        req.headers(),
        peer,
    );
    match &identity {
        Identity::Refused(message) => {
            logging::warn(
                "auth.proxy",
                "Failed to authenticate request",
                &[("error", message), ("remote_addr", &peer.to_string())],
            );
            return (
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                Json(json!({
                    "message": message,
                    "messageId": "auth-proxy.invalid-ip",
                    "statusCode": 407,
                })),
            )
                .into_response();
        }
        Identity::InvalidJwt(why) => {
            logging::warn(
                "auth.jwt",
                "Failed to verify JWT",
                &[("error", why), ("remote_addr", &peer.to_string())],
            );
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({
                    "message": "Failed to verify JWT",
                    "messageId": "jwt.invalid",
                    "statusCode": 401,
                })),
            )
                .into_response();
        }
        Identity::BadCredentials => {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({
                    "message": "Invalid username or password",
                    "messageId": "password-auth.failed",
                    "statusCode": 401,
                })),
            )
                .into_response();
        }
        Identity::Anonymous | Identity::User(_) => {}
    }
    req.extensions_mut().insert(identity);
    next.run(req).await
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "Unauthorized"})),
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

async fn index(State(state): State<Shared>, Extension(identity): Extension<Identity>) -> Response {
    let s = &state.settings;
    let who = match &identity {
        Identity::User(u) => format!(
            "Signed in as <span id=\"login\">{}</span> (email <span id=\"email\">{}</span>, \
             role <span id=\"role\">{}</span>)",
            html_escape(&u.login),
            html_escape(&u.email),
            html_escape(&u.role)
        ),
        _ => "<span id=\"login\"></span>not signed in".to_string(),
    };
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><base href=\"{base}/\">\
         <title>Grafana</title></head>\n<body>\n<h1>grafana-standin {version}</h1>\n\
         <p id=\"user\">{who}</p>\n<p>app url: <span id=\"app-url\">{app_url}</span></p>\n\
         <p><small>A test double for Grafana, not Grafana.</small></p>\n</body></html>\n",
        base = html_escape(&s.app_sub_url),
        version = html_escape(&s.version),
        app_url = html_escape(&s.app_url),
    );
    Html(page).into_response()
}

fn user_json(u: &User) -> Value {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(u.login.as_bytes());
    let id = u64::from(u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) >> 1);
    json!({
        "id": if u.is_grafana_admin { 1 } else { id + 2 },
        "uid": hex::encode(&digest[..7]),
        "email": u.email,
        "name": u.name,
        "login": u.login,
        "theme": "",
        "orgId": 1,
        "isGrafanaAdmin": u.is_grafana_admin,
        "isDisabled": false,
        "isExternal": u.authenticated_by == "auth.proxy",
        "authLabels": if u.authenticated_by == "auth.proxy" { vec!["Auth Proxy"] } else { vec![] },
        // Not in Grafana's /api/user (it is in /api/user/orgs); added so tests see the role.
        "role": u.role,
        "groups": u.groups,
        "authenticatedBy": u.authenticated_by,
    })
}

async fn api_user(Extension(identity): Extension<Identity>) -> Response {
    match identity {
        Identity::User(u) => Json(user_json(&u)).into_response(),
        _ => unauthorized(),
    }
}

async fn live_ws(Extension(identity): Extension<Identity>, ws: WebSocketUpgrade) -> Response {
    // Grafana Live needs a signed-in user.
    if !matches!(identity, Identity::User(_)) {
        return unauthorized();
    }
    ws.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                if socket.send(msg).await.is_err() {
                    break;
                }
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

/// Grafana 11's healthResponse: field order database, version, commit; pretty-printed.
#[derive(Serialize)]
struct HealthResponse<'a> {
    database: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<&'a str>,
}

async fn api_health(State(state): State<Shared>) -> Response {
    let s = &state.settings;
    let ok = s.standin.mode != Mode::UnhealthyDb && database::healthy(&s.database).await;
    let body = HealthResponse {
        database: if ok { "ok" } else { "failing" },
        version: (!s.hide_version).then_some(s.version.as_str()),
        commit: (!s.hide_version).then_some(COMMIT),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json; charset=UTF-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn metrics(State(state): State<Shared>) -> Response {
    let s = &state.settings;
    let start = state
        .started
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut text = format!(
        "# HELP grafana_build_info A metric with a constant '1' value labeled by version, revision, branch, and goversion from which Grafana was built\n\
         # TYPE grafana_build_info gauge\n\
         grafana_build_info{{branch=\"HEAD\",edition=\"oss\",goversion=\"standin\",revision=\"{COMMIT}\",version=\"{}\"}} 1\n\
         # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\n\
         process_start_time_seconds {start:.3}\n",
        s.version.replace(['"', '\\', '\n'], "_")
    );
    if let Some(rss) = resident_memory_bytes() {
        text.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes {rss}\n"
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// Every request header (names lowercased; repeated headers as arrays), the peer address, and
/// what authentication made of the request. Not part of Grafana.
async fn standin_headers(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    req: Request<Body>,
) -> Response {
    let mut map = Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let v = if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        map.insert(name.as_str().to_string(), v);
    }
    let identity = match auth::authenticate(
        &state.settings,
        &state.admin_password_sha256,
        &headers,
        peer,
    ) {
        Identity::User(u) => json!({"user": u.login}),
        Identity::Refused(m) => json!({"refused": m}),
        Identity::BadCredentials => json!({"refused": "Invalid username or password"}),
        Identity::InvalidJwt(why) => json!({"refused": format!("Failed to verify JWT: {why}")}),
        Identity::Anonymous => Value::Null,
    };
    Json(json!({
        "peer": peer.to_string(),
        "method": req.method().as_str(),
        "uri": original.to_string(),
        "path": uri.path(),
        "version": format!("{:?}", req.version()),
        "headers": map,
        "identity": identity,
    }))
    .into_response()
}

async fn standin_settings(State(state): State<Shared>) -> Response {
    Json(state.settings.report()).into_response()
}
