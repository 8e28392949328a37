//! Routing: which part of pug a request is for, and the route table of tenants' ready replicas.
//!
//! Owns: classifying a request ([`Target`]: a tenant's path, pug's login or logout, a redirect,
//! a bad path, pug's API) in path mode (`/t/<tenant>/…`) and host mode (`<tenant>.<domain>`),
//! and looking up a tenant's [`Route`] (the table the refresh loop keeps, or the store for a
//! tenant created since).
//!
//! Must not: authenticate or authorise (the pipeline does, after classification), or contact
//! an instance.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use pug_config::GatewayMode;
use pug_types::TenantId;

use crate::proxy::Route;
use crate::{path, Inner, HOST_MODE_PREFIX};

/// Where a request goes.
pub(crate) enum Target {
    Tenant(TenantId, String),
    Login(Option<TenantId>),
    Logout(Option<TenantId>),
    /// Host mode: a tenant host exchanging a one-time sign-in code.
    Callback(TenantId),
    Redirect(String),
    BadPath(path::PathError),
    NoTenant,
    Pug,
}

impl Inner {
    pub(crate) fn route(&self, id: &TenantId) -> Option<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The route of a tenant missing from the table (created since the last refresh).
    pub(crate) async fn route_from_store(&self, id: &TenantId) -> Option<Arc<Route>> {
        let status = self.store.tenant_status(id).await.ok()??;
        let route = Arc::new(Route::new(&status, None));
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), route.clone());
        Some(route)
    }
    pub(crate) fn classify(&self, req: &Request) -> Target {
        let raw = req.uri().path();
        let settings = &self.settings;
        if settings.mode == GatewayMode::Host {
            let Some(tenant) = self.tenant_of_host(req) else {
                // pug's own origin: where people sign in and out; everything else is the API.
                return match raw {
                    "/login" => Target::Login(None),
                    "/logout" => Target::Logout(None),
                    _ => Target::Pug,
                };
            };
            let path = match path::normalize(raw) {
                Ok(p) => p,
                Err(e) => return Target::BadPath(e),
            };
            return match path.strip_prefix(HOST_MODE_PREFIX) {
                Some("/login") => Target::Login(Some(tenant)),
                Some("/logout") => Target::Logout(Some(tenant)),
                Some("/callback") => Target::Callback(tenant),
                _ => Target::Tenant(tenant, path),
            };
        }
        let maybe_gateway = raw.starts_with("/t/")
            || matches!(raw, "/t" | "/login" | "/logout")
            || raw.contains(['%', '.', '\\'])
            || raw.contains("//");
        if !maybe_gateway {
            return Target::Pug;
        }
        let path = match path::normalize(raw) {
            Ok(p) => p,
            Err(e) => return Target::BadPath(e),
        };
        match path.as_str() {
            "/login" => return Target::Login(None),
            "/logout" => return Target::Logout(None),
            "/t" | "/t/" => return Target::NoTenant,
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/t/") else {
            return Target::Pug;
        };
        let (segment, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let Ok(tenant) = TenantId::parse(segment) else {
            return Target::NoTenant;
        };
        if tail.is_empty() {
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            return Target::Redirect(format!("/t/{tenant}/{query}"));
        }
        Target::Tenant(tenant, path)
    }

    fn tenant_of_host(&self, req: &Request) -> Option<TenantId> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())?;
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let label = host
            .strip_suffix(&self.settings.domain)?
            .strip_suffix('.')?;
        TenantId::parse(label).ok()
    }

    /// Where a person signs in to reach `tenant` and continue to `next` there: in host mode
    /// always pug's own origin (never a tenant's, whose Grafana could read the form), with the
    /// tenant to continue to; in path mode the one origin's `/login`.
    pub(crate) fn sign_in_url(&self, tenant: Option<&TenantId>, next: &str) -> String {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        match (self.settings.mode, tenant) {
            (GatewayMode::Host, Some(t)) if next.is_empty() => {
                format!("{}/login?tenant={t}", self.settings.public_url)
            }
            (GatewayMode::Host, Some(t)) => {
                format!(
                    "{}/login?tenant={t}&next={}",
                    self.settings.public_url,
                    enc(next)
                )
            }
            (GatewayMode::Host, None) => format!("{}/login", self.settings.public_url),
            (GatewayMode::Path, _) if next.is_empty() => "/login".to_owned(),
            (GatewayMode::Path, _) => format!("/login?next={}", enc(next)),
        }
    }

    /// Where the sign-out form posts: a tenant's host in host mode signs out there.
    pub(crate) fn logout_path(&self, host_tenant: Option<&TenantId>) -> &'static str {
        match host_tenant {
            Some(_) => "/_pug/logout",
            None => "/logout",
        }
    }
}
