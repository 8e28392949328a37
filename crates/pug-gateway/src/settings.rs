//! The gateway's settings and the names it uses on the wire (cookies, the embed token
//! parameter, host mode's prefix for pug's pages).
//!
//! Owns: [`GatewaySettings`] built from pug's configuration, and which cookie names and scheme
//! follow from the public URL (the `__Host-` prefix over https).
//!
//! Must not: read the store or handle requests.

use std::time::Duration;

use pug_config::{Config, GatewayMode};

use crate::{server, throttle};

/// The session cookie (served over http, for local use; see [`GatewaySettings::session_cookie`]).
pub const SESSION_COOKIE: &str = "pug_session";
/// The CSRF cookie of pug's forms (double submit), over http.
pub const CSRF_COOKIE: &str = "pug_csrf";
/// The session cookie over https: the `__Host-` prefix makes browsers refuse it unless it was set
/// by this very host, `Secure`, with `Path=/` and no `Domain`, so a sibling tenant host cannot
/// plant one (cookie tossing, review F8). Browsers only accept the prefix on secure origins, so
/// plain-http deployments keep the names above.
pub const SECURE_SESSION_COOKIE: &str = "__Host-pug_session";
/// The CSRF cookie over https (see [`SECURE_SESSION_COOKIE`]).
pub const SECURE_CSRF_COOKIE: &str = "__Host-pug_csrf";
/// The query parameter that carries an embed token.
pub const TOKEN_PARAM: &str = "pug_token";
/// Where pug's own pages live on a tenant's host in host mode.
pub const HOST_MODE_PREFIX: &str = "/_pug";

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub mode: GatewayMode,
    /// The parent domain in host mode.
    pub domain: String,
    /// The URL people use to reach pug, without a trailing slash.
    pub public_url: String,
    pub connect_timeout: Duration,
    /// How long an instance may take to start answering a request.
    pub response_timeout: Duration,
    pub session_ttl: Duration,
    pub embed_session_ttl: Duration,
    /// How often the routing table and embed keys are re-read from the store.
    pub refresh_interval: Duration,
    /// How long a session or membership lookup is reused (revocations take effect within it).
    pub auth_cache_ttl: Duration,
    pub login_window: Duration,
    pub login_failures_per_user: u32,
    pub login_failures_per_address: u32,
    /// How often expired and orphaned sessions and expired embed token ids are deleted.
    pub session_sweep_interval: Duration,
    /// Proxies whose `X-Forwarded-For` is believed (see [`crate::throttle::client_ip`]).
    pub trusted_proxies: Vec<throttle::IpNet>,
    /// Password checks at once across all workers (at least 1).
    pub login_concurrency: usize,
    /// A WebSocket tunnel with no traffic for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// How long a request to a sleeping tenant is held while it wakes (then 503).
    pub wake_timeout: Duration,
    /// How often tenants' activity is written to the store (one batched write).
    pub activity_flush_interval: Duration,
    /// Tell tenants' Grafanas who a request is from with a signed identity token
    /// (`pug_auth::gateway_token`, Grafana's `[auth.jwt]`) instead of auth-proxy headers. The
    /// swarm backend's tenants trust a signature, because pug's replicas there have no fixed
    /// address (see `pug_orchestrator::GatewayTrust`); the others trust the gateway's address.
    pub signed_identity: bool,
}

impl GatewaySettings {
    /// The gateway settings of a pug configuration.
    pub fn from_config(config: &Config) -> Self {
        let g = &config.gateway;
        Self {
            mode: config.gateway.mode,
            domain: config.gateway.domain.trim_matches('.').to_ascii_lowercase(),
            public_url: config.public_url(),
            connect_timeout: Duration::from_secs(g.connect_timeout_secs),
            response_timeout: Duration::from_secs(g.response_timeout_secs),
            session_ttl: Duration::from_secs(g.session_ttl_secs),
            embed_session_ttl: Duration::from_secs(g.embed_session_ttl_secs),
            refresh_interval: Duration::from_secs(1),
            auth_cache_ttl: Duration::from_secs(5),
            login_window: Duration::from_secs(g.login_window_secs),
            login_failures_per_user: g.login_failures_per_user,
            login_failures_per_address: g.login_failures_per_address,
            session_sweep_interval: Duration::from_secs(g.session_sweep_interval_secs),
            trusted_proxies: g
                .trusted_proxies
                .iter()
                .filter_map(|p| {
                    p.parse::<throttle::IpNet>()
                        .or_else(|_| p.parse::<std::net::IpAddr>().map(throttle::IpNet::from))
                        .ok()
                })
                .collect(),
            login_concurrency: server::worker_count(g.login_concurrency),
            tunnel_idle_timeout: Duration::from_secs(g.tunnel_idle_timeout_secs),
            wake_timeout: Duration::from_secs(g.wake_timeout_secs.max(1)),
            activity_flush_interval: Duration::from_secs(1),
            signed_identity: config.backend == pug_config::Backend::Swarm,
        }
    }

    pub(crate) fn secure(&self) -> bool {
        self.public_url.starts_with("https:")
    }

    /// The name of pug's session cookie: `__Host-` prefixed when served over https.
    pub fn session_cookie(&self) -> &'static str {
        if self.secure() {
            SECURE_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        }
    }

    /// The name of pug's CSRF cookie: `__Host-` prefixed when served over https.
    pub fn csrf_cookie(&self) -> &'static str {
        if self.secure() {
            SECURE_CSRF_COOKIE
        } else {
            CSRF_COOKIE
        }
    }

    /// A tenant's origin in host mode (`<scheme>://<tenant>.<domain>[:<port of public_url>]`),
    /// without a trailing slash.
    pub fn tenant_origin(&self, tenant: &pug_types::TenantId) -> String {
        let after_scheme = self
            .public_url
            .split_once("://")
            .map_or(self.public_url.as_str(), |(_, rest)| rest);
        let authority = after_scheme.split('/').next().unwrap_or_default();
        // The port, if the authority has one (an IPv6 literal's colons sit inside brackets).
        let port = authority
            .rsplit_once(':')
            .filter(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(_, p)| format!(":{p}"))
            .unwrap_or_default();
        format!("{}://{tenant}.{}{port}", self.proto(), self.domain)
    }

    pub(crate) fn proto(&self) -> &'static str {
        if self.secure() {
            "https"
        } else {
            "http"
        }
    }
}
