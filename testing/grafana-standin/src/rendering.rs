//! Grafana's side of remote rendering (pkg/services/rendering/http_mode.go): `GET
//! /render/{path}?width&height&timeout&tz…` asks the renderer at `[rendering] server_url` to load
//! `callback_url` + `{path}` with a fresh `renderKey`, and returns the image it gets.
//!
//! As Grafana does, the renderer is called with `X-Auth-Token: <renderer_token>` and the
//! parameters `url`, `width`, `height`, `deviceScaleFactor`, `timeout`, `renderKey`, `domain`,
//! `timezone` and `encoding=png`. The renderer's status and body are passed back unchanged (so a
//! test sees the renderer's 401/403 reasons). Test double only: no render-key cache, no
//! concurrency limit, no PDF.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::server::Shared;

pub async fn render(
    State(state): State<Shared>,
    Path(path): Path<String>,
    Query(mut q): Query<HashMap<String, String>>,
) -> Response {
    let ini = &state.settings.ini;
    let get = |key: &str| {
        ini.get("rendering")
            .and_then(|s| s.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let (server_url, callback_url) = (get("server_url"), get("callback_url"));
    if server_url.is_empty() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "no image renderer configured ([rendering] server_url is empty)",
        )
            .into_response();
    }
    let callback = if callback_url.is_empty() {
        state.settings.app_url.clone()
    } else {
        callback_url
    };
    let domain = url::Url::parse(&callback)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let width = q.remove("width").unwrap_or_else(|| "1000".into());
    let height = q.remove("height").unwrap_or_else(|| "500".into());
    let timeout = q.remove("timeout").unwrap_or_else(|| "60".into());
    let tz = q.remove("tz").unwrap_or_default();
    let mut target = format!("{}{}", callback, path.trim_start_matches('/'));
    if !q.is_empty() {
        let rest: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&q)
            .finish();
        target = format!("{target}?{rest}");
    }
    let render_key = format!("{:032x}", rand_u128());
    let params = [
        ("url", target.as_str()),
        ("width", &width),
        ("height", &height),
        ("deviceScaleFactor", "1"),
        ("timeout", &timeout),
        ("renderKey", &render_key),
        ("domain", &domain),
        ("timezone", &tz),
        ("encoding", "png"),
    ];
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let request = axum::http::Request::get(format!("{server_url}?{query}"))
        .header("X-Auth-Token", get("renderer_token"))
        .body(axum::body::Body::empty());
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("bad [rendering] server_url {server_url:?}: {e}"),
            )
                .into_response()
        }
    };
    // A plain HTTP/1 client: the renderer is reached over http, like Grafana's default setup.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<axum::body::Body>();
    match client.request(request).await {
        Ok(res) => {
            let status = res.status();
            let ctype = res
                .headers()
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
            match http_body_util::BodyExt::collect(res.into_body()).await {
                Ok(body) => {
                    (status, [(header::CONTENT_TYPE, ctype)], body.to_bytes()).into_response()
                }
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("rendering failed: {e}"),
                )
                    .into_response(),
            }
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering failed: {e}"),
        )
            .into_response(),
    }
}

/// A render key: unique enough for a test double (Grafana uses a random 32-char string).
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut a = std::collections::hash_map::RandomState::new().build_hasher();
    a.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let mut b = std::collections::hash_map::RandomState::new().build_hasher();
    b.write_u64(a.finish());
    ((a.finish() as u128) << 64) | b.finish() as u128
}
