//! pug's sign-in and sign-out forms.
//!
//! Owns: the login form (CSRF-checked, throttled per user and per client address, password
//! checks bounded by a shared permit pool, the same work for unknown users), the logout form,
//! where a successful sign-in may continue (`next`, on this origin only), and the client
//! address a trusted proxy reports.
//!
//! Must not: reveal whether a user exists (timing or message), or follow a `next` off this
//! origin.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use pug_config::GatewayMode;
use pug_store::SessionRecord;
use pug_types::{ExposeSecret, SecretString, TenantId};

use crate::responses::{internal, peer_of, redirect, retry_after};
use crate::session::cookie;
use crate::{pages, path, throttle, Inner, HOST_MODE_PREFIX};

impl Inner {
    /// The client's address: the peer, or what a trusted proxy says (see [`throttle::client_ip`]).
    pub(crate) fn client_ip(
        &self,
        headers: &HeaderMap,
        peer: std::net::IpAddr,
    ) -> std::net::IpAddr {
        throttle::client_ip(
            peer,
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
            &self.settings.trusted_proxies,
        )
    }

    /// `next` if it is a path on this origin, else `/`.
    pub(crate) fn safe_next(&self, next: &str) -> String {
        let default = "/".to_owned();
        if !next.starts_with('/') || next.starts_with("//") || next.contains(['\\', '\r', '\n']) {
            return default;
        }
        let (p, q) = match next.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (next, None),
        };
        match path::normalize(p) {
            Ok(p) => match q {
                Some(q) => format!("{p}?{q}"),
                None => p,
            },
            Err(_) => default,
        }
    }

    /// The sign-in form. `host_tenant`: the request came to that tenant's host (host mode),
    /// which never shows the form — script in the tenant's Grafana shares that origin and could
    /// read the password — but sends the browser to pug's own origin. There, `?tenant=` names
    /// where to continue: once signed in (or at once, if already signed in there) the browser
    /// goes to the tenant host's callback with a one-time code.
    pub(crate) async fn login(&self, host_tenant: Option<TenantId>, req: Request) -> Response {
        let html = true;
        let peer = peer_of(&req);
        let raw_query = req.uri().query().unwrap_or_default().to_owned();
        let query = |name: &str| query_param(&raw_query, name);
        let query_next = query("next").unwrap_or_default();
        if let Some(t) = host_tenant.as_ref() {
            let status = if req.method() == Method::POST {
                StatusCode::SEE_OTHER
            } else {
                StatusCode::FOUND
            };
            return redirect(status, &self.sign_in_url(Some(t), &query_next));
        }
        // Host mode, on pug's origin: the tenant to continue to.
        let target = match self.settings.mode {
            GatewayMode::Host => query("tenant").and_then(|t| TenantId::parse(&t).ok()),
            GatewayMode::Path => None,
        };
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        if let (Some(t), true) = (&target, get) {
            if let Some(session) = cookie(req.headers(), self.settings.session_cookie())
                .and_then(|c| self.signer.verify("session", c))
            {
                let session = SecretString::from(session.to_owned());
                match self.store.create_login_code(&session, t).await {
                    Ok(Some(code)) => {
                        return redirect(
                            StatusCode::FOUND,
                            &self.callback_url(t, &code, &query_next),
                        )
                    }
                    Ok(None) => {} // ended or expired: sign in again
                    Err(e) => return internal(html, e),
                }
            }
        }
        let tenant = target;
        let (csrf, fresh) = self.csrf_token(req.headers());
        let action = match &tenant {
            Some(t) => format!("/login?tenant={t}"),
            None => "/login".to_owned(),
        };
        let action = action.as_str();
        let hint = tenant.as_ref().map(|t| t.to_string()).or_else(|| {
            query_next
                .strip_prefix("/t/")
                .and_then(|r| r.split('/').next())
                .filter(|t| TenantId::parse(t).is_ok())
                .map(str::to_owned)
        });
        let form_page = |status: StatusCode, next: &str, message: Option<&str>, user: &str| {
            let mut r = pages::html(
                status,
                pages::login(action, hint.as_deref(), next, &csrf, message, user),
            );
            if fresh {
                self.set_cookie(
                    &mut r,
                    self.settings.csrf_cookie(),
                    &csrf,
                    Duration::from_secs(3600),
                );
            }
            r
        };
        match *req.method() {
            Method::GET | Method::HEAD => form_page(StatusCode::OK, &query_next, None, ""),
            Method::POST => {
                let headers = req.headers().clone();
                let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
                    return form_page(
                        StatusCode::BAD_REQUEST,
                        "",
                        Some("The form could not be read."),
                        "",
                    );
                };
                let form: HashMap<String, String> =
                    form_urlencoded::parse(&body).into_owned().collect();
                let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
                let (user, password, next) = (
                    get("user").trim().to_ascii_lowercase(),
                    get("password"),
                    get("next"),
                );
                if !self.csrf_ok(&headers, get("csrf")) {
                    self.metrics.login("failure");
                    return form_page(
                        StatusCode::FORBIDDEN,
                        next,
                        Some("This form expired or did not come from pug. Please sign in again."),
                        &user,
                    );
                }
                // The user field is checked before any lookup, throttle entry or log line.
                if !pug_auth::identity::plausible_sign_in(&user) {
                    self.metrics.login("failure");
                    return form_page(
                        StatusCode::UNAUTHORIZED,
                        next,
                        Some("Wrong user name or password."),
                        "",
                    );
                }
                let client = throttle::client_key(self.client_ip(&headers, peer.ip()));
                let too_many = |wait: Duration| {
                    let mut r = form_page(
                        StatusCode::TOO_MANY_REQUESTS,
                        next,
                        Some(&format!(
                            "Too many failed sign-ins. Try again in {} seconds.",
                            wait.as_secs().max(1)
                        )),
                        &user,
                    );
                    retry_after(&mut r, wait);
                    r
                };
                // A permit first (a full table answers at once, nothing queues), then the
                // throttle, which counts the attempt before the hash.
                let Ok(permit) = self.password_checks.clone().try_acquire_owned() else {
                    self.metrics.login("throttled");
                    let mut r = form_page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        next,
                        Some("pug is busy checking other sign-ins. Please try again in a moment."),
                        &user,
                    );
                    retry_after(&mut r, Duration::from_secs(1));
                    return r;
                };
                let address_over = match self.throttle.begin(&user, client, Instant::now()) {
                    throttle::Admission::Wait(wait) => {
                        self.metrics.login("throttled");
                        return too_many(wait);
                    }
                    throttle::Admission::Go { address_over } => address_over,
                };
                let creds = match self.store.user_credentials(&user).await {
                    Ok(c) => c,
                    Err(e) => return internal(html, e),
                };
                let (hash, email, display_name) = creds
                    .clone()
                    .unwrap_or_else(|| (self.dummy_hash.clone(), String::new(), String::new()));
                let password = password.to_owned();
                let ok = tokio::task::spawn_blocking(move || {
                    let ok = pug_auth::verify_password(&hash, &password);
                    drop(permit);
                    ok
                })
                .await
                .unwrap_or(false)
                    && creds.is_some();
                if !ok {
                    self.metrics.login("failure");
                    tracing::info!(user = %user, client = %client, "gateway: failed sign-in");
                    if address_over {
                        return too_many(self.settings.login_window);
                    }
                    return form_page(
                        StatusCode::UNAUTHORIZED,
                        next,
                        Some("Wrong user name or password."),
                        &user,
                    );
                }
                self.throttle.succeeded(&user, client);
                let ttl = self.settings.session_ttl;
                let record = SessionRecord {
                    user: user.clone(),
                    email,
                    display_name: if display_name.is_empty() {
                        user.clone()
                    } else {
                        display_name
                    },
                    scope: None,
                    expires_at_ms: pug_store::now_ms() + ttl.as_millis() as i64,
                };
                let session = match self.store.create_session(&record).await {
                    Ok(s) => s,
                    Err(e) => return internal(html, e),
                };
                self.metrics.login("success");
                let to = match &tenant {
                    // Host mode: on to the tenant's host, with a code for a session there.
                    Some(t) => match self.store.create_login_code(&session, t).await {
                        Ok(Some(code)) => self.callback_url(t, &code, next),
                        Ok(None) => {
                            return internal(
                                html,
                                pug_store::StoreError::Corrupt(
                                    "a session just created is not live".into(),
                                ),
                            )
                        }
                        Err(e) => return internal(html, e),
                    },
                    None => self.safe_next(next),
                };
                let mut r = redirect(StatusCode::SEE_OTHER, &to);
                self.set_cookie(
                    &mut r,
                    self.settings.session_cookie(),
                    &self.signer.sign("session", session.expose_secret()),
                    ttl,
                );
                r
            }
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
    }

    /// Host mode: a tenant host exchanges the one-time code from pug's origin for a session of
    /// its own (a host-only cookie), then goes on to `next` on this host.
    pub(crate) async fn callback(&self, tenant: TenantId, req: Request) -> Response {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        let raw_query = req.uri().query().unwrap_or_default().to_owned();
        let query = |name: &str| query_param(&raw_query, name);
        let next = query("next").unwrap_or_default();
        let redeemed = match query("code") {
            // A code is 43 characters of base64url; anything else is not looked up.
            Some(code) if code.len() <= 64 => {
                self.store
                    .redeem_login_code(&SecretString::from(code), &tenant)
                    .await
            }
            _ => Ok(None),
        };
        match redeemed {
            Ok(Some(session)) => {
                self.metrics.login("code_success");
                let mut r = redirect(StatusCode::SEE_OTHER, &self.safe_next(&next));
                self.set_cookie(
                    &mut r,
                    self.settings.session_cookie(),
                    &self.signer.sign("session", session.expose_secret()),
                    self.settings.session_ttl,
                );
                r
            }
            Ok(None) => {
                self.metrics.login("code_failure");
                let again = self.sign_in_url(Some(&tenant), &next);
                pages::error(
                    true,
                    StatusCode::UNAUTHORIZED,
                    "Sign-in link expired",
                    &format!(
                        "This sign-in link expired or was already used. Sign in again at {again}"
                    ),
                    serde_json::json!({"login": again}),
                )
            }
            Err(e) => internal(true, e),
        }
    }

    /// Host mode: the tenant host's callback URL carrying `code`, continuing to `next` there.
    fn callback_url(&self, tenant: &TenantId, code: &SecretString, next: &str) -> String {
        let next = self.safe_next(next);
        format!(
            "{}{HOST_MODE_PREFIX}/callback?code={}&next={}",
            self.settings.tenant_origin(tenant),
            code.expose_secret(),
            form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        )
    }

    pub(crate) async fn logout(&self, host_tenant: Option<TenantId>, req: Request) -> Response {
        let (csrf, fresh) = self.csrf_token(req.headers());
        match *req.method() {
            Method::GET | Method::HEAD => {
                let mut r = pages::html(
                    StatusCode::OK,
                    pages::logout(self.logout_path(host_tenant.as_ref()), &csrf),
                );
                if fresh {
                    self.set_cookie(
                        &mut r,
                        self.settings.csrf_cookie(),
                        &csrf,
                        Duration::from_secs(3600),
                    );
                }
                r
            }
            Method::POST => {
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 16 * 1024)
                    .await
                    .unwrap_or_default();
                let submitted = form_urlencoded::parse(&body)
                    .find(|(k, _)| k == "csrf")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                if !self.csrf_ok(&headers, &submitted) {
                    return pages::error(true, StatusCode::FORBIDDEN, "Sign out", "This form expired or did not come from pug; reload the page and try again.", serde_json::Value::Null);
                }
                if let Some(id) = cookie(&headers, self.settings.session_cookie())
                    .and_then(|c| self.signer.verify("session", c))
                {
                    // Every session of this sign-in ends (pug's origin and every tenant
                    // host); other replicas' caches drop theirs within auth_cache_ttl.
                    if let Err(e) = self
                        .store
                        .end_login(&SecretString::from(id.to_owned()))
                        .await
                    {
                        return internal(true, e);
                    }
                    self.sessions.clear();
                }
                let mut r = pages::html(
                    StatusCode::OK,
                    pages::signed_out(&self.sign_in_url(None, "")),
                );
                self.set_cookie(&mut r, self.settings.session_cookie(), "", Duration::ZERO);
                r
            }
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
    }
}

/// The first value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
