//! The path of a tenant request, as named steps: take an embed token from the URL →
//! authenticate → authorise → route → forward.
//!
//! Owns: the order of the steps and what each answers when it stops a request (a sign-in
//! redirect or 401, 403 for a non-member, 404 for no tenant, 503 while no replica is ready), and
//! the per-tenant request metrics around them. A sleeping tenant is woken (`wake`) only after
//! authorisation, and every request let through marks its tenant used (`activity`).
//!
//! Must not: let anything reach a tenant's instance before authorisation has passed, or trust
//! any identity the client sends (the proxy replaces every `X-WEBAUTH-*` header).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use pug_auth::GrafanaRole;
use pug_store::{EmbedScope, SessionRecord, StoreError};
use pug_types::{SecretString, TenantId};

use crate::proxy::{self, Route};
use crate::responses::{internal, peer_of, redirect, RequestError};
use crate::session::{cookie, session_of_claims};
use crate::tracking::track;
use crate::wake::{Waking, WAIT_PATH};
use crate::{metrics, pages, Inner, TOKEN_PARAM};

impl Inner {
    pub(crate) async fn tenant_request(
        self: Arc<Self>,
        id: TenantId,
        path: String,
        req: Request,
    ) -> Response {
        let start = Instant::now();
        self.metrics.in_flight.inc();
        let mut routed = None;
        let response = self.tenant_response(&id, &path, req, &mut routed).await;
        let class = metrics::class_index(response.status().as_u16());
        let handles = match routed.or_else(|| self.route(&id)) {
            Some(route) => route.metrics[class]
                .get_or_init(|| self.metrics.handles(id.as_str(), class))
                .clone(),
            None => self.metrics.handles("unknown", class),
        };
        track(response, self.metrics.clone(), handles, start)
    }

    /// The answer to a request for tenant `id`; `routed` gets the tenant's route once it is
    /// known (for the metrics, without a second lookup). Each step either hands the request on
    /// or answers it.
    pub(crate) async fn tenant_response(
        &self,
        id: &TenantId,
        path: &str,
        req: Request,
        routed: &mut Option<Arc<Route>>,
    ) -> Response {
        let html = pages::wants_html(req.headers());

        // 1. An embed token in the URL becomes a session, then a redirect to the clean URL.
        if let Some((token, clean)) = take_embed_token(path, req.uri().query()) {
            return Box::pin(self.embed_login(id, &token, &clean, html)).await;
        }
        // 2. Authenticate.
        let principal = match self.principal(id, req.headers()).await {
            Ok(Some(p)) => p,
            Ok(None) => return self.sign_in_first(id, html, path, req.uri().query()),
            Err(e) => return e.into_response_for(html),
        };
        // 3. Authorise, before anything reaches the tenant's instance.
        let role = match self.authorise(&principal, id, html).await {
            Ok(role) => role,
            Err(answer) => return answer,
        };
        // 4. Route.
        let route = match self.route_for(id, html).await {
            Ok(route) => route,
            Err(answer) => return answer,
        };
        // The waking page's held request is pug's, never the tenant's Grafana's.
        if path.ends_with(WAIT_PATH) && path == self.wait_path(id) {
            return self.wait_endpoint(id, &route).await;
        }
        let route = if !route.endpoints.is_empty() {
            route
        } else if self.wakes_on_request(id, &route) {
            // 4b. A sleeping tenant wakes, for an authorised request only.
            let navigation = html && req.method() == axum::http::Method::GET;
            let next = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            match Box::pin(self.wake_for(id, navigation, &next, html)).await {
                Waking::Ready(route) => route,
                Waking::Answer(answer) => {
                    *routed = Some(route);
                    return answer;
                }
            }
        } else {
            *routed = Some(route.clone());
            return proxy::unavailable(html, id, route.phase);
        };
        *routed = Some(route.clone());
        // 5. Forward.
        route.activity.touch();
        self.forward(id, &route, &principal, role, path, req).await
    }

    /// Step 2's answer to a request without a session: a browser goes to the sign-in page (and
    /// comes back to where it was), anything else gets 401 with where to sign in.
    fn sign_in_first(
        &self,
        id: &TenantId,
        html: bool,
        path: &str,
        query: Option<&str>,
    ) -> Response {
        let next = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let login = self.sign_in_url(Some(id), &next);
        if html {
            return redirect(StatusCode::FOUND, &login);
        }
        let mut r = pages::error(
            false,
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "sign in first: use pug's session cookie or `Authorization: Bearer <embed token>`",
            serde_json::json!({"login": login}),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pug\""),
        );
        r
    }

    /// Step 3: the role `principal` has in tenant `id` — an embed session's own role for its
    /// own tenant only, a pug user's membership — or the 403 that ends the request.
    async fn authorise(
        &self,
        principal: &SessionRecord,
        id: &TenantId,
        html: bool,
    ) -> Result<GrafanaRole, Response> {
        let role = match &principal.scope {
            Some(EmbedScope { tenant, role, .. }) if tenant == id => GrafanaRole::parse(role),
            Some(_) => None,
            None => match self.membership(&principal.user, id).await {
                Ok(role) => role,
                Err(e) => return Err(internal(html, e)),
            },
        };
        role.ok_or_else(|| {
            pages::error(
                html,
                StatusCode::FORBIDDEN,
                "Not a member",
                &format!(
                    "{} is not a member of tenant {id}; ask an administrator for access \
                     (pug user grant {} {id} --role Viewer)",
                    principal.user, principal.user
                ),
                serde_json::json!({"tenant": id.as_str()}),
            )
        })
    }

    /// Step 4: the tenant's route (from the table, or the store for a tenant created since the
    /// last refresh), or the 404 that ends the request.
    async fn route_for(&self, id: &TenantId, html: bool) -> Result<Arc<Route>, Response> {
        if let Some(r) = self.route(id) {
            return Ok(r);
        }
        Box::pin(self.route_from_store(id)).await.ok_or_else(|| {
            pages::error(
                html,
                StatusCode::NOT_FOUND,
                "No such tenant",
                &format!("there is no tenant {id}"),
                serde_json::Value::Null,
            )
        })
    }

    /// Step 5: the request to a ready replica, with pug's identity headers for `principal` (or
    /// its signed identity token, when tenants trust a signature).
    async fn forward(
        &self,
        id: &TenantId,
        route: &Route,
        principal: &SessionRecord,
        role: GrafanaRole,
        path: &str,
        req: Request,
    ) -> Response {
        let peer = peer_of(&req);
        let path_and_query: std::borrow::Cow<'_, str> = match req.uri().query() {
            Some(q) => format!("{path}?{q}").into(),
            None => path.into(),
        };
        let on_connect_error = || {
            self.metrics
                .connect_errors
                .get_or_create(&metrics::TenantLabels {
                    tenant: id.to_string(),
                })
                .inc();
        };
        // Signed only now: the request has passed authorisation.
        let identity_token = self
            .identity
            .as_ref()
            .map(|t| t.token(id, principal, role, pug_store::now_ms() / 1000));
        proxy::forward(
            proxy::Forward {
                connect_timeout: self.settings.connect_timeout,
                tenant: id,
                route,
                identity: principal,
                identity_token,
                role,
                peer,
                proto: self.settings.proto(),
                path_and_query: &path_and_query,
                response_timeout: self.settings.response_timeout,
                tunnel_idle_timeout: self.settings.tunnel_idle_timeout,
                on_connect_error: &on_connect_error,
            },
            req,
        )
        .await
    }

    /// The signed-in person: a session cookie, or an embed token as a bearer token.
    pub(crate) async fn principal(
        &self,
        tenant: &TenantId,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<SessionRecord>>, RequestError> {
        if let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            // Verified on every request, no session: it stops with its key (within a refresh)
            // and its own expiry. A bearer token is not "used up" by being sent: API clients
            // send one token for its whole (at most ten-minute) life.
            let verified = Box::pin(self.verify_embed(token.trim(), tenant)).await?;
            let until = verified.claims.exp.saturating_mul(1000);
            return Ok(Some(Arc::new(session_of_claims(tenant, &verified, until))));
        }
        let Some(id) = cookie(headers, self.settings.session_cookie())
            .and_then(|c| self.signer.verify("session", c))
        else {
            return Ok(None);
        };
        let store = self.store.clone();
        let session = self
            .sessions
            .get(id, || {
                let (store, id) = (store.clone(), SecretString::from(id.to_owned()));
                Box::pin(async move { Ok(store.session(&id).await?.map(Arc::new)) })
            })
            .await
            .map_err(RequestError::Store)?;
        // An embed session whose key is gone ends at the next key refresh, cached or not.
        Ok(session.filter(|s| {
            s.expires_at_ms > pug_store::now_ms()
                && s.scope
                    .as_ref()
                    .is_none_or(|scope| self.keys.contains(&scope.key_id))
        }))
    }

    pub(crate) async fn membership(
        &self,
        user: &str,
        tenant: &TenantId,
    ) -> Result<Option<GrafanaRole>, StoreError> {
        let store = self.store.clone();
        let roles = self
            .members
            .get(user, || {
                let (store, user) = (store.clone(), user.to_owned());
                Box::pin(async move {
                    let roles: HashMap<TenantId, GrafanaRole> = store
                        .memberships_of(&user)
                        .await?
                        .into_iter()
                        .filter_map(|(t, r)| GrafanaRole::parse(&r).map(|r| (t, r)))
                        .collect();
                    Ok::<_, StoreError>(Arc::new(roles))
                })
            })
            .await?;
        Ok(roles.get(tenant).copied())
    }
}

/// Step 1: the embed token in `query` (`?pug_token=`), with the URL it leaves when taken out.
fn take_embed_token(path: &str, query: Option<&str>) -> Option<(String, String)> {
    let query = query?;
    let token = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == TOKEN_PARAM)
        .map(|(_, v)| v.into_owned())?;
    let rest: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != TOKEN_PARAM)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let clean = if rest.is_empty() {
        path.to_owned()
    } else {
        let q = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(rest)
            .finish();
        format!("{path}?{q}")
    };
    Some((token, clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embed_token_is_taken_out_of_the_url() {
        for (path, query, want) in [
            ("/t/acme/d/x", None, None),
            ("/t/acme/d/x", Some("orgId=1"), None),
            (
                "/t/acme/d/x",
                Some("pug_token=abc"),
                Some(("abc", "/t/acme/d/x")),
            ),
            (
                "/t/acme/d/x",
                Some("orgId=1&pug_token=abc&from=now-1h"),
                Some(("abc", "/t/acme/d/x?orgId=1&from=now-1h")),
            ),
            // Decoded once; the other pairs are re-encoded as a form would.
            (
                "/d/x",
                Some("pug_token=a%2Eb&q=a+b"),
                Some(("a.b", "/d/x?q=a+b")),
            ),
            // The first token wins; every copy leaves the URL.
            (
                "/d/x",
                Some("pug_token=one&pug_token=two"),
                Some(("one", "/d/x")),
            ),
        ] {
            let got = take_embed_token(path, query);
            let got = got.as_ref().map(|(t, c)| (t.as_str(), c.as_str()));
            assert_eq!(got, want, "{path} {query:?}");
        }
    }
}
