//! Scrapes through pug: `GET /api/v1/prometheus/scrape/{tenant}/{replica}` answers with that
//! running instance's `/metrics`, and `GET /api/v1/prometheus/scrape/renderer` with the
//! renderer's, so a Prometheus that discovers its targets with `?via=pug` needs no route to the
//! tenants' network (see the parent module).
//!
//! Owns: finding the instance (the store says the tenant exists, the orchestrator which
//! replicas run and where their probes go, as the readiness probes do), the one upstream
//! request per scrape, bounded by Prometheus' scrape timeout (`X-Prometheus-Scrape-Timeout-Seconds`,
//! at most [`MAX_TIMEOUT`], [`DEFAULT_TIMEOUT`] without it), and streaming the answer back
//! with its `Content-Type`. Errors are `{"error": …}`: 404 for a tenant or replica that does
//! not exist, 503 for a replica that does not run, 502 when the instance cannot be reached or
//! does not answer 200, 504 when it does not answer in time.
//!
//! Must not: become a proxy. The upstream URL is always `<probe base of a running instance the
//! orchestrator reports>/metrics` (or the renderer's `/metrics`): nothing of the request
//! chooses a host, a path or a query. Only `Accept` (content negotiation) and the scrape
//! timeout reach the instance; never the caller's `Authorization` (a read token that reads
//! every tenant) or any other header. Redirects are not followed (a tenant's Grafana is as
//! hostile as its admin: a redirect could point pug at another tenant's instance).

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pug_orchestrator::InstanceState;

use crate::{ApiError, ApiState};

/// The scrape timeout header Prometheus sends with every scrape.
pub const SCRAPE_TIMEOUT_HEADER: &str = "x-prometheus-scrape-timeout-seconds";

/// The upstream timeout when the scrape names none (Prometheus' default `scrape_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a scrape may hold an upstream request, whatever it asks for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The shortest upstream timeout (a scrape asking for less gets this).
const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// The `Content-Type` of an answer that names none: Prometheus' text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One client for every scrape: no proxy from the environment (it would take the scrape
/// elsewhere), no redirects, pooled connections to the instances.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        pug_http::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .build()
            .expect("an HTTP client on pug's preconfigured TLS builds")
    })
}

/// The upstream timeout for a scrape with these headers: Prometheus' own scrape timeout,
/// within [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`], else [`DEFAULT_TIMEOUT`].
pub fn upstream_timeout(headers: &HeaderMap) -> Duration {
    headers
        .get(SCRAPE_TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(|secs| Duration::from_secs_f64(secs.min(MAX_TIMEOUT.as_secs_f64())))
        .map_or(DEFAULT_TIMEOUT, |d| d.max(MIN_TIMEOUT))
}

/// A replica number as a path gives it: decimal digits only (no sign, no spaces).
fn replica_number(raw: &str) -> Option<u32> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// One tenant instance's `/metrics`, fetched by pug.
#[utoipa::path(get, path = "/api/v1/prometheus/scrape/{tenant}/{replica}", tag = "prometheus",
    params(("tenant" = String, Path), ("replica" = u32, Path)),
    responses(
        (status = 200, description = "The instance's /metrics, with its Content-Type", content_type = "text/plain"),
        (status = 404, body = crate::ErrorBody), (status = 503, body = crate::ErrorBody),
        (status = 502, body = crate::ErrorBody), (status = 504, body = crate::ErrorBody)))]
pub(crate) async fn scrape_instance(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((raw_tenant, raw_replica)) = path.map_err(|e| {
        ApiError::Missing(format!(
            "no scrape route at this path ({}); it is /api/v1/prometheus/scrape/<tenant>/<replica>",
            e.body_text()
        ))
    })?;
    let id = crate::tenants::tenant_id(&raw_tenant)?;
    let no_replica = |runs: &str| {
        ApiError::Missing(format!(
            "tenant {id} has no replica {raw_replica:?} ({runs}); replicas are numbered from 0"
        ))
    };
    let Some(replica) = replica_number(&raw_replica) else {
        return Err(no_replica("a replica is a number"));
    };
    if state.store.tenant(&id).await?.is_none() {
        return Err(ApiError::NotFound(id.to_string()));
    }
    let instances = state.orchestrator.instances(&id).await.map_err(|e| {
        ApiError::Unavailable(format!(
            "cannot list the instances of tenant {id}: {}",
            pug_orchestrator::error_chain(&e)
        ))
    })?;
    let Some(instance) = instances
        .iter()
        .find(|i| i.tenant == id && i.replica == replica)
    else {
        let runs = if instances.is_empty() {
            "it has no instance now: suspended, asleep or not started yet".to_owned()
        } else {
            let list: Vec<String> = instances.iter().map(|i| i.replica.to_string()).collect();
            format!("it has {}", list.join(", "))
        };
        return Err(no_replica(&runs));
    };
    if let InstanceState::Exited { reason } = &instance.state {
        return Err(ApiError::Unavailable(format!(
            "replica {replica} of tenant {id} is not running ({reason})"
        )));
    }
    let url = format!("{}/metrics", state.orchestrator.probe_base(instance, ""));
    fetch(&url, &format!("replica {replica} of tenant {id}"), &headers).await
}

/// Any other path below `/api/v1/prometheus/scrape/`: a 404 that says what the routes are.
pub(crate) async fn no_scrape_route() -> ApiError {
    ApiError::Missing(
        "no scrape route at this path; they are /api/v1/prometheus/scrape/<tenant>/<replica> \
         and /api/v1/prometheus/scrape/renderer"
            .to_owned(),
    )
}

/// The renderer's `/metrics`, fetched by pug (the renderer listens where instances reach it,
/// which a Prometheus off the tenants' network does not).
#[utoipa::path(get, path = "/api/v1/prometheus/scrape/renderer", tag = "prometheus",
    responses(
        (status = 200, description = "The renderer's /metrics", content_type = "text/plain"),
        (status = 404, body = crate::ErrorBody), (status = 502, body = crate::ErrorBody),
        (status = 504, body = crate::ErrorBody)))]
pub(crate) async fn scrape_renderer(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(address) = &state.renderer_address else {
        return Err(ApiError::Missing(
            "this pug runs no renderer (renderer.mode, --role)".to_owned(),
        ));
    };
    fetch(
        &format!("http://{address}/metrics"),
        "the renderer",
        &headers,
    )
    .await
}

/// GETs `url` (pug's own choice, never the caller's) with the scrape's `Accept` and timeout
/// only, and streams a 200's body back with its `Content-Type`.
async fn fetch(url: &str, what: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let timeout = upstream_timeout(headers);
    let mut request = client().get(url).timeout(timeout).header(
        SCRAPE_TIMEOUT_HEADER,
        format!("{:.3}", timeout.as_secs_f64()),
    );
    if let Some(accept) = headers.get(header::ACCEPT) {
        request = request.header(header::ACCEPT, accept.clone());
    }
    let upstream = request.send().await.map_err(|e| {
        if e.is_timeout() {
            ApiError::GatewayTimeout(format!(
                "{what} did not answer GET /metrics within {timeout:?}"
            ))
        } else {
            ApiError::BadGateway(format!(
                "cannot scrape {what}: {}",
                pug_orchestrator::error_chain(&e)
            ))
        }
    })?;
    if upstream.status() != StatusCode::OK {
        return Err(ApiError::BadGateway(format!(
            "{what} answered GET /metrics with {}",
            upstream.status()
        )));
    }
    let content_type = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(TEXT_FORMAT));
    // Streamed: the body is never held whole; the timeout above bounds reading it too.
    let body = Body::from_stream(upstream.bytes_stream());
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_timeout_is_prometheus_own_within_bounds() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(SCRAPE_TIMEOUT_HEADER, value.parse().unwrap());
            upstream_timeout(&headers)
        };
        assert_eq!(upstream_timeout(&HeaderMap::new()), DEFAULT_TIMEOUT);
        assert_eq!(with("9.5"), Duration::from_millis(9500));
        assert_eq!(with(" 2 "), Duration::from_secs(2));
        assert_eq!(with("3600"), MAX_TIMEOUT);
        assert_eq!(with("0.001"), MIN_TIMEOUT);
        for bad in ["0", "-1", "NaN", "inf", "ten", ""] {
            assert_eq!(with(bad), DEFAULT_TIMEOUT, "{bad:?}");
        }
    }

    #[test]
    fn a_replica_is_decimal_digits() {
        assert_eq!(replica_number("0"), Some(0));
        assert_eq!(replica_number("12"), Some(12));
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "0x1",
            "1/../2",
            "..",
            "99999999999",
        ] {
            assert_eq!(replica_number(bad), None, "{bad:?}");
        }
    }
}
