//! The HTTP API: Grafana's remote rendering protocol plus health, version and metrics.
//!
//! Owns: routes (`/`, `/healthz`, `/metrics`, `/version`, `/render/version`, `/render`,
//! `/render/csv`), the `X-Auth-Token` check (a render admitted with a tenant's token is told
//! to [`RenderActivity`] as that tenant's activity), the mapping of every [`RenderError`] to its status
//! with a plain-text reason (and `Retry-After` on 429), and the request-duration histogram.
//!
//! Must not: drive the browser (it calls [`crate::engine::Engine`]) or decide policy itself (it
//! asks [`crate::security`]).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::activity::RenderActivity;
use crate::config::RendererConfig;
use crate::engine::Engine;
use crate::error::RenderError;
use crate::metrics::{Metrics, StatusLabel};
use crate::params;
use crate::security::{Scope, TokenScopes, UrlPolicy};

/// Version reported at `/render/version`: Grafana enables full-height images and scaling from
/// 3.4.0 and PDF from 3.10.0; this is the reference renderer's current major.
pub const PROTOCOL_VERSION: &str = "5.0.0";

/// What every handler needs.
pub struct AppState {
    /// The render engine.
    pub engine: Engine,
    /// Token → scope.
    pub scopes: Arc<dyn TokenScopes>,
    /// Told of each render a tenant's token is accepted for.
    pub activity: Arc<dyn RenderActivity>,
    /// Settings (defaults and bounds of parameters).
    pub config: Arc<RendererConfig>,
    /// Metrics, also served at `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// The renderer's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "OK" }))
        .route("/metrics", get(metrics))
        .route("/version", get(version_text))
        .route("/render/version", get(render_version))
        .route("/render", get(render))
        .route("/render/csv", get(render_csv))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

impl IntoResponse for RenderError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut res = (status, format!("{self}\n")).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        res
    }
}

async fn root() -> &'static str {
    "pug renderer: Grafana's remote image rendering API (GET /render, /render/csv, /render/version)\n"
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if !state.config.metrics_enabled {
        return (
            StatusCode::NOT_FOUND,
            "metrics are disabled (ENABLE_METRICS=false)\n",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, pug_metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn version_text() -> String {
    format!(
        "pug-renderer {}\nprotocol {PROTOCOL_VERSION}\n",
        env!("CARGO_PKG_VERSION")
    )
}

async fn render_version() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            r#"{{"version":"{PROTOCOL_VERSION}","implementation":"pug-renderer {}"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
    )
        .into_response()
}

/// Records `http_request_duration_seconds{status_code}` for every response.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let res = next.run(req).await;
    state
        .metrics
        .http_duration
        .get_or_create(&StatusLabel {
            status_code: res.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    res
}

/// The token's scope, or 401. A tenant's token makes the render that tenant's activity (its
/// Grafana is at work, whether or not the page then renders); a refused one is nobody's.
fn authenticate(
    scopes: &dyn TokenScopes,
    activity: &dyn RenderActivity,
    headers: &HeaderMap,
) -> Result<Scope, RenderError> {
    let token = headers
        .get("x-auth-token")
        .ok_or(RenderError::Unauthorized("Missing X-Auth-Token header"))?
        .to_str()
        .map_err(|_| RenderError::Unauthorized("Unauthorized"))?;
    let grant = scopes
        .grant(token)
        .ok_or(RenderError::Unauthorized("Unauthorized"))?;
    if let Some(tenant) = &grant.tenant {
        activity.rendered(tenant);
    }
    Ok(grant.scope)
}

/// The render URL against the policy, before the request takes a slot.
async fn check_url(state: &AppState, url: &url::Url, scope: &Scope) -> Result<(), RenderError> {
    state
        .engine
        .policy()
        .check_navigation(url, scope)
        .map_err(|r| RenderError::Forbidden(r.0))?;
    UrlPolicy::check_resolved(url)
        .await
        .map_err(|r| RenderError::Forbidden(r.0))
}

/// A render URL that names one of the scope's containers, pointed at its address; the
/// `renderKey` cookie, which Grafana scopes to the name, follows it.
fn resolve_names(page: &mut params::PageRequest, scope: &Scope) {
    let Some((url, domain)) = scope.resolve(&page.url) else {
        return;
    };
    if let Some(key) = &mut page.render_key {
        if page
            .url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case(&key.domain))
        {
            key.domain = domain;
        }
    }
    page.url = url;
}

/// Grafana's `X-Tenant-ID`: whose share of the slots a standalone render takes.
fn tenant_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn accept_language(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn render(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, RenderError> {
    let scope = authenticate(&*state.scopes, &*state.activity, &headers)?;
    let query = params::query_map(req.uri().query());
    let mut request = params::parse_render(&query, accept_language(&headers), &state.config)
        .map_err(|e| RenderError::BadRequest(e.0))?;
    resolve_names(&mut request.page, &scope);
    request.page.tenant = tenant_header(&headers);
    request.page.access_token = headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(|v| params::AccessToken(v.to_owned()));
    check_url(&state, &request.page.url, &scope).await?;
    let rendered = state.engine.render(request, scope).await?;
    Ok((
        [(header::CONTENT_TYPE, rendered.encoding.content_type())],
        rendered.bytes,
    )
        .into_response())
}

async fn render_csv(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, RenderError> {
    let scope = authenticate(&*state.scopes, &*state.activity, &headers)?;
    let query = params::query_map(req.uri().query());
    let mut request = params::parse_csv(&query, accept_language(&headers), &state.config)
        .map_err(|e| RenderError::BadRequest(e.0))?;
    resolve_names(&mut request.page, &scope);
    request.page.tenant = tenant_header(&headers);
    request.page.access_token = headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(|v| params::AccessToken(v.to_owned()));
    check_url(&state, &request.page.url, &scope).await?;
    let csv = state.engine.render_csv(request, scope).await?;
    // The name holds only [A-Za-z0-9._-] (see security::safe_csv_file_name), so no quoting issue.
    let disposition = format!("attachment; filename=\"{}\"", csv.file_name);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        csv.bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{ScopedTokens, StaticTokens};
    use std::sync::Mutex;

    /// Remembers whose renders it was told of.
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl RenderActivity for Seen {
        fn rendered(&self, tenant: &str) {
            self.0.lock().unwrap().push(tenant.to_owned());
        }
    }

    fn with_token(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-auth-token", HeaderValue::from_str(token).unwrap());
        h
    }

    #[test]
    fn a_render_is_the_activity_of_the_tenant_whose_token_asked_for_it() {
        let acme = Scope::Hosts(vec!["127.0.0.1:20001".into()]);
        let globex = Scope::Hosts(vec!["127.0.0.1:20002".into()]);
        let tokens = ScopedTokens::new();
        tokens.replace_tenants([
            ("tok-acme", acme.clone(), Some("acme".to_owned())),
            ("tok-globex", globex, Some("globex".to_owned())),
        ]);
        let seen = Seen::default();

        assert_eq!(
            authenticate(&tokens, &seen, &with_token("tok-acme")).unwrap(),
            acme
        );
        assert_eq!(*seen.0.lock().unwrap(), vec!["acme".to_owned()]);

        // Refused: a wrong token, none at all, or one that is not text.
        for headers in [with_token("tok-nobody"), HeaderMap::new()] {
            assert!(matches!(
                authenticate(&tokens, &seen, &headers),
                Err(RenderError::Unauthorized(_))
            ));
        }
        let mut binary = HeaderMap::new();
        binary.insert("x-auth-token", HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(authenticate(&tokens, &seen, &binary).is_err());
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec!["acme".to_owned()],
            "a refused token is nobody's activity"
        );

        authenticate(&tokens, &seen, &with_token("tok-globex")).unwrap();
        assert_eq!(
            *seen.0.lock().unwrap(),
            vec!["acme".to_owned(), "globex".to_owned()]
        );
    }

    #[test]
    fn standalone_tokens_are_nobodys_activity() {
        let seen = Seen::default();
        let tokens = StaticTokens::new(["secret"]);
        assert_eq!(
            authenticate(&tokens, &seen, &with_token("secret")).unwrap(),
            Scope::Any
        );
        assert!(seen.0.lock().unwrap().is_empty());
    }
}
