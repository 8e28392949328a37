//! Forwarding one request to one of a tenant's ready replicas: header hygiene (hop-by-hop per
//! RFC 9110 §7.6.1, `X-Forwarded-*`, the auth-proxy headers set by pug and only by pug, and
//! only the cookies Grafana reads for that tenant), streamed bodies, WebSocket upgrades,
//! round-robin across replicas with a short cool-down of a replica that refused a connection,
//! and one retry on another replica for safe requests.
//!
//! Cookies: an allow-list, never a deny-list. Every other cookie of the browser (a parent
//! domain's SSO session, a front proxy's `_oauth2_proxy`, a load balancer's) stays out of the
//! tenant's Grafana, where its admin could collect it through a datasource's "allowed cookies".
//!
//! Upgrades: only a WebSocket handshake (`GET`, `Connection: upgrade`, `Upgrade: websocket`)
//! is passed on as one, without a body and without `Content-Length`/`Transfer-Encoding` (a
//! kept `Content-Length` made Grafana wait for a body that never came, pinning a connection).
//! Any other `Upgrade` (`h2c`, `TLS/1.0`…) is ignored, as RFC 9110 §7.8 lets a server do:
//! the request goes on as the plain HTTP/1.1 request it also is, with its body, rather than
//! failing for clients (`curl --http2`) that offer an upgrade they can live without.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use pug_store::SessionRecord;
use pug_types::{Phase, TenantId, TenantStatus};

use crate::pages;
use pug_auth::GrafanaRole;
use pug_types::error_chain;

/// How long a replica that refused a connection is skipped.
const COOL_DOWN_MS: u64 = 2_000;

/// Where a tenant's requests go, as last read from the store.
#[derive(Debug)]
pub(crate) struct Route {
    pub phase: Phase,
    pub endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    /// The tenant's request metrics by status class, looked up on first use.
    pub metrics: [OnceLock<crate::metrics::Handles>; 5],
    /// The tenant's use since the last activity flush; kept across route changes.
    pub activity: Arc<crate::activity::Use>,
}

#[derive(Debug)]
pub(crate) struct Endpoint {
    /// `host:port`.
    pub addr: String,
    /// Milliseconds since the Unix epoch until which this replica is skipped.
    down_until_ms: AtomicU64,
}

impl Route {
    /// The route of `status`, keeping `activity` (the tenant's previous route's, if any).
    pub fn new(status: &TenantStatus, activity: Option<Arc<crate::activity::Use>>) -> Self {
        Self {
            activity: activity.unwrap_or_default(),
            phase: status.phase,
            endpoints: status
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    addr: e.clone(),
                    down_until_ms: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            metrics: Default::default(),
        }
    }

    /// Whether `status` would route the same way (so the old route, with its round-robin
    /// position and cool-downs, can be kept).
    pub fn same_as(&self, status: &TenantStatus) -> bool {
        self.phase == status.phase
            && self.endpoints.len() == status.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&status.endpoints)
                .all(|(a, b)| &a.addr == b)
    }

    /// The next replica in round-robin order, skipping cooled-down ones (unless all are) and
    /// `except`.
    fn pick(&self, except: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        if n <= 1 {
            // One replica: cool-downs cannot change the choice (and no clock is read).
            return (n == 1 && except != Some(0)).then_some(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = pug_store::now_ms() as u64;
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| Some(*i) != except);
        let mut fallback = None;
        for i in candidates {
            if self.endpoints[i].down_until_ms.load(Ordering::Relaxed) <= now {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    fn cool_down(&self, i: usize) {
        self.endpoints[i]
            .down_until_ms
            .store(pug_store::now_ms() as u64 + COOL_DOWN_MS, Ordering::Relaxed);
    }
}

/// Everything [`forward`] needs besides the request.
pub(crate) struct Forward<'a> {
    pub connect_timeout: Duration,
    pub tenant: &'a TenantId,
    pub route: &'a Route,
    /// Who the request is from, as the tenant's Grafana is told.
    pub identity: &'a SessionRecord,
    /// The gateway's signed token saying so, sent instead of the auth-proxy headers when the
    /// tenant's Grafana trusts a signature (`[auth.jwt]`).
    pub identity_token: Option<HeaderValue>,
    pub role: GrafanaRole,
    pub peer: SocketAddr,
    /// `http` or `https`: the scheme people use to reach pug.
    pub proto: &'static str,
    pub path_and_query: &'a str,
    pub response_timeout: Duration,
    /// A WebSocket tunnel with no traffic for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub on_connect_error: &'a (dyn Fn() + Sync),
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// obsolete ones proxies still drop.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Constants, not strings: comparing two standard names is an integer compare, where a
    // string would be parsed and hashed for each of the 9 names on every request.
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::PROXY_AUTHENTICATE
        || matches!(name.as_str(), "proxy-connection" | "keep-alive")
}

/// The cookies Grafana reads besides its login cookie ([`is_login_cookie`]), from Grafana's
/// source (grafana/grafana); nothing else passes, pug's own cookies included:
/// - `grafana_session_expiry`: `pkg/services/authn/authn.go` (`sessionExpiryCookie`, written
///   with the session cookie; the frontend reads it to rotate the session);
/// - `redirect_to`: `pkg/services/authn/authn.go` (`getRedirectURL`) and `pkg/api/login.go`;
/// - `login_error`: `pkg/api/login.go` (`LoginErrorCookieName`, after a failed OAuth login);
/// - `renderKey`: `pkg/services/contexthandler/contexthandler.go` (`initContextWithRenderAuth`);
/// - `oauth_state`, `oauth_code_verifier`: `pkg/api/login_oauth.go` (`OauthStateCookieName`,
///   `OauthPKCECookieName`: Grafana's own OAuth login, if a tenant configures one).
const GRAFANA_COOKIES: [&str; 6] = [
    "grafana_session_expiry",
    "redirect_to",
    "login_error",
    "renderKey",
    "oauth_state",
    "oauth_code_verifier",
];

/// Whether `name` is `tenant`'s Grafana login cookie, `grafana_session_<tenant>` with `-` as
/// `_` (the `auth.login_cookie_name` pug-orchestrator's settings give every tenant).
fn is_login_cookie(name: &str, tenant: &TenantId) -> bool {
    let Some(rest) = name.strip_prefix("grafana_session_") else {
        return false;
    };
    let t = tenant.as_str().as_bytes();
    rest.len() == t.len()
        && rest
            .bytes()
            .zip(t)
            .all(|(a, &b)| a == if b == b'-' { b'_' } else { b })
}

/// Whether the cookie `name` may reach `tenant`'s Grafana.
fn grafana_cookie(name: &str, tenant: &TenantId) -> bool {
    GRAFANA_COOKIES.contains(&name) || is_login_cookie(name, tenant)
}

/// Removes hop-by-hop headers, including every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names finds out without a lookup per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    for name in named.into_iter().chain(hop) {
        headers.remove(name);
    }
}

/// The `Upgrade` to pass on: `websocket` for a WebSocket handshake (`GET` with
/// `Connection: upgrade` and `websocket` among the `Upgrade` protocols, RFC 6455 §4.1), else
/// none: any other upgrade is ignored and the request goes on as a plain one.
fn upgrade_of(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    let tokens = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let websocket = *method == Method::GET
        && tokens(header::CONNECTION)
            .iter()
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
        && tokens(header::UPGRADE)
            .iter()
            .any(|t| t.eq_ignore_ascii_case("websocket"));
    websocket.then(|| HeaderValue::from_static("websocket"))
}

/// A header value from user data: control characters dropped (they cannot come from pug's
/// validated names, but a display name is free text).
fn value(s: &str) -> HeaderValue {
    if !s.chars().any(char::is_control) {
        if let Ok(v) = HeaderValue::from_str(s) {
            return v; // the common case, without a second copy
        }
    }
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    HeaderValue::from_bytes(clean.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

// Built once (a `&str` name is parsed on every use).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_WEBAUTH_USER: HeaderName = HeaderName::from_static("x-webauth-user");
const X_WEBAUTH_EMAIL: HeaderName = HeaderName::from_static("x-webauth-email");
const X_WEBAUTH_NAME: HeaderName = HeaderName::from_static("x-webauth-name");
const X_WEBAUTH_ROLE: HeaderName = HeaderName::from_static("x-webauth-role");
/// `pug_auth::gateway_token::HEADER`, lower case.
const X_PUG_IDENTITY: HeaderName = HeaderName::from_static("x-pug-identity");

/// The request headers the tenant's Grafana gets.
fn upstream_headers(mut h: HeaderMap, f: &Forward<'_>, upgrade: Option<&HeaderValue>) -> HeaderMap {
    let forwarded_host = h.get(header::HOST).cloned();
    let previous_xff = h.remove(X_FORWARDED_FOR);
    strip_hop_by_hop(&mut h);
    // Nothing the client says about identity reaches Grafana: every auth-proxy header (pug
    // sets its own below), credentials Grafana would accept instead, and pug's own cookies.
    // One pass over the names finds them (usually none), instead of a lookup per name.
    let spoofable: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            **k == header::AUTHORIZATION
                || **k == header::FORWARDED
                || k.as_str().starts_with("x-webauth-")
                || **k == X_PUG_IDENTITY
                || k.as_str() == "x-real-ip"
        })
        .cloned()
        .collect();
    for k in spoofable {
        h.remove(k);
    }
    filter_cookies(&mut h, f.tenant);
    if upgrade.is_some() {
        // A handshake has no body (and none is sent): no framing may promise one.
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::TRANSFER_ENCODING);
    }
    // Room for the (up to) 9 headers set below at once, instead of growing the map (and
    // rehashing it) on the way.
    h.reserve(9);

    let client_ip = f.peer.ip().to_canonical().to_string();
    let xff = match previous_xff.as_ref().and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {client_ip}"),
        _ => client_ip,
    };
    h.insert(X_FORWARDED_FOR, value(&xff));
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    if let Some(host) = forwarded_host {
        h.insert(X_FORWARDED_HOST, host);
    }
    match &f.identity_token {
        Some(token) => {
            h.insert(X_PUG_IDENTITY, token.clone());
        }
        None => {
            h.insert(X_WEBAUTH_USER, value(&f.identity.user));
            h.insert(X_WEBAUTH_EMAIL, value(&f.identity.email));
            h.insert(X_WEBAUTH_NAME, value(&f.identity.display_name));
            h.insert(X_WEBAUTH_ROLE, HeaderValue::from_static(f.role.as_str()));
        }
    }
    if let Some(up) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, up.clone());
    }
    h
}

/// Keeps only the cookies Grafana reads for `tenant` ([`grafana_cookie`]) in the `Cookie`
/// header(s), joined into one; drops the header if none is left.
fn filter_cookies(h: &mut HeaderMap, tenant: &TenantId) {
    let kept_as_is =
        |pair: &str| grafana_cookie(pair.split('=').next().unwrap_or("").trim(), tenant);
    let mut values = h.get_all(header::COOKIE).iter();
    let (Some(only), None) = (values.next(), values.next()) else {
        if h.contains_key(header::COOKIE) {
            rebuild_cookies(h, tenant);
        }
        return;
    };
    // The common case: one `Cookie` line whose every pair may pass.
    let fine = only.to_str().is_ok_and(|v| {
        v.split(';')
            .all(|pair| !pair.trim().is_empty() && kept_as_is(pair))
    });
    if !fine {
        rebuild_cookies(h, tenant);
    }
}

fn rebuild_cookies(h: &mut HeaderMap, tenant: &TenantId) {
    let mut kept = String::new();
    for v in h.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            let name = pair.split('=').next().unwrap_or("").trim();
            if !name.is_empty() && grafana_cookie(name, tenant) {
                if !kept.is_empty() {
                    kept.push_str("; ");
                }
                kept.push_str(pair.trim());
            }
        }
    }
    h.remove(header::COOKIE);
    if !kept.is_empty() {
        h.insert(header::COOKIE, value(&kept));
    }
}

fn build(
    method: &Method,
    path_and_query: &str,
    headers: HeaderMap,
    body: Body,
) -> Option<Request<Body>> {
    let mut req = Request::builder()
        .method(method.clone())
        .uri(path_and_query)
        .body(body)
        .ok()?;
    *req.headers_mut() = headers;
    Some(req)
}

/// Forwards `req` and returns the tenant's answer (or pug's 502/504 page).
pub(crate) async fn forward(f: Forward<'_>, req: Request<Body>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let html = pages::wants_html(&parts.headers);
    let upgrade = upgrade_of(&parts.method, &parts.headers);
    let client_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    let headers = upstream_headers(std::mem::take(&mut parts.headers), &f, upgrade.as_ref());
    // Safe requests without a body can be sent again on another replica (if there is one):
    // keep a copy of the headers for that.
    let replayable = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
        && body.is_end_stream()
        && f.route.endpoints.len() > 1;
    let mut spare = replayable.then(|| headers.clone());
    let mut headers = Some(headers);

    let Some(first) = f.route.pick(None) else {
        return unavailable(html, f.tenant, f.route.phase);
    };
    let body = if upgrade.is_some() {
        Body::empty()
    } else {
        body
    };
    let mut attempt = (first, body);
    let mut retried = false;
    let response = loop {
        let (i, body) = attempt;
        let addr = &f.route.endpoints[i].addr;
        let Some(h) = headers.take().or_else(|| spare.take()) else {
            break None;
        };
        let Some(upstream) = build(&parts.method, f.path_and_query, h, body) else {
            return pages::error(
                html,
                StatusCode::BAD_REQUEST,
                "Bad request",
                "the request URI is not valid",
                serde_json::Value::Null,
            );
        };
        let sent = crate::upstream::send(addr, upstream, f.connect_timeout);
        match tokio::time::timeout(f.response_timeout, sent).await {
            Ok(Ok(resp)) => break Some(resp),
            Ok(Err(e)) => {
                if e.is_connect() {
                    (f.on_connect_error)();
                    f.route.cool_down(i);
                }
                tracing::warn!(tenant = %f.tenant, replica = %addr, error = %error_chain(&e), "upstream request failed");
                if replayable && !retried && spare.is_some() {
                    if let Some(next) = f.route.pick(Some(i)) {
                        retried = true;
                        attempt = (next, Body::empty());
                        continue;
                    }
                }
                return pages::error(
                    html,
                    StatusCode::BAD_GATEWAY,
                    "Grafana did not answer",
                    &format!(
                        "tenant {}'s Grafana could not be reached; try again in a moment",
                        f.tenant
                    ),
                    serde_json::json!({"tenant": f.tenant.as_str()}),
                );
            }
            Err(_) => {
                return pages::error(
                    html,
                    StatusCode::GATEWAY_TIMEOUT,
                    "Grafana took too long",
                    &format!(
                        "tenant {}'s Grafana did not answer within {} seconds",
                        f.tenant,
                        f.response_timeout.as_secs()
                    ),
                    serde_json::json!({"tenant": f.tenant.as_str()}),
                );
            }
        }
    };
    let Some(response) = response else {
        return pages::error(
            html,
            StatusCode::BAD_GATEWAY,
            "Grafana did not answer",
            &format!("tenant {}'s Grafana could not be reached", f.tenant),
            serde_json::json!({"tenant": f.tenant.as_str()}),
        );
    };

    let (mut rparts, rbody) = response.into_parts();
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        let mut for_upgrade = Response::from_parts(rparts, rbody);
        let upstream_upgrade = hyper::upgrade::on(&mut for_upgrade);
        let (mut rparts, _) = for_upgrade.into_parts();
        let upgrade_value = rparts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut rparts.headers);
        if let (Some(client_upgrade), Some(up)) = (client_upgrade, upgrade_value) {
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            rparts.headers.insert(header::UPGRADE, up);
            let tenant = f.tenant.clone();
            let idle = f.tunnel_idle_timeout;
            // An open WebSocket (Grafana Live) is activity for as long as it is open.
            let open = crate::activity::Use::open_tunnel(&f.route.activity);
            tokio::spawn(async move {
                let _open = open;
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        crate::server::tunnel(&mut client, &mut upstream, idle).await;
                    }
                    Err(e) => tracing::debug!(%tenant, error = %e, "upgrade did not complete"),
                }
            });
            return Response::from_parts(rparts, Body::empty());
        }
        return pages::error(
            html,
            StatusCode::BAD_GATEWAY,
            "Upgrade failed",
            "the connection could not be upgraded",
            serde_json::Value::Null,
        );
    }
    strip_hop_by_hop(&mut rparts.headers);
    Response::from_parts(rparts, rbody)
}

/// The 503 for a tenant with no ready replica.
pub(crate) fn unavailable(html: bool, tenant: &TenantId, phase: Phase) -> Response<Body> {
    let mut r = pages::error(
        html,
        StatusCode::SERVICE_UNAVAILABLE,
        "Grafana is not ready",
        &format!(
            "tenant {tenant}'s Grafana has no ready instance (phase: {phase}); try again shortly"
        ),
        serde_json::json!({"tenant": tenant.as_str(), "phase": phase.as_str()}),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

#[cfg(test)]
mod tests;
