//! Sessions: embed tokens verified and turned into sessions, pug's signed cookies and the CSRF
//! double submit of its forms.
//!
//! Owns: verifying an embed token against the current keys (with one shared store read for a
//! key made since the last refresh), minting an embed session (one per `jti`), the session
//! record of a verified token, setting cookies, and reading a cookie from a request.
//!
//! Must not: check passwords (login does) or decide membership (the pipeline does).

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use pug_auth::{embed, EmbedError, GrafanaRole};
use pug_store::{EmbedScope, EmbedSessionOutcome, SessionRecord};
use pug_types::{ExposeSecret, TenantId};

use crate::responses::{internal, redirect, RequestError};
use crate::{pages, Inner};

impl Inner {
    /// Verifies an embed token against the current keys; a token whose key is not among them
    /// gets one more chance against a store read at most one refresh interval old (shared by
    /// all such tokens, and remembered per `kid` for that interval), so a made-up `kid` costs
    /// no store read of its own.
    pub(crate) async fn verify_embed(
        &self,
        token: &str,
        tenant: &TenantId,
    ) -> Result<embed::Verified, RequestError> {
        let now = pug_store::now_ms() / 1000;
        match embed::verify(token, &self.keys.current(), tenant, now) {
            Err(EmbedError::UnknownKey) => {
                // A key made since the last refresh, perhaps.
                let Some(kid) = embed::key_id_of(token) else {
                    return Err(RequestError::Embed(EmbedError::UnknownKey));
                };
                let known = Box::pin(self.keys.lookup_unknown(&kid))
                    .await
                    .map_err(RequestError::Store)?;
                if !known {
                    return Err(RequestError::Embed(EmbedError::UnknownKey));
                }
                embed::verify(token, &self.keys.current(), tenant, now).map_err(RequestError::Embed)
            }
            other => other.map_err(RequestError::Embed),
        }
    }

    pub(crate) async fn embed_login(
        &self,
        id: &TenantId,
        token: &str,
        clean: &str,
        html: bool,
    ) -> Response {
        let verified = match self.verify_embed(token, id).await {
            Ok(v) => v,
            Err(e) => {
                self.metrics.login("embed_failure");
                return e.into_response_for(html);
            }
        };
        let ttl = self.settings.embed_session_ttl;
        let until = embed::session_expiry_ms(
            &verified.claims,
            pug_store::now_ms(),
            ttl.as_millis() as i64,
        );
        let record = session_of_claims(id, &verified, until);
        let jti = verified
            .claims
            .jti
            .as_deref()
            .map(|j| (j, embed::remember_jti_until_ms(&verified.claims)));
        let session = match self.store.create_embed_session(&record, jti).await {
            Ok(EmbedSessionOutcome::Created(s)) => s,
            Ok(EmbedSessionOutcome::Replayed) => {
                self.metrics.login("embed_failure");
                return RequestError::Embed(EmbedError::Replayed).into_response_for(html);
            }
            Ok(EmbedSessionOutcome::NoKey) => {
                self.metrics.login("embed_failure");
                return RequestError::Embed(EmbedError::UnknownKey).into_response_for(html);
            }
            Ok(EmbedSessionOutcome::NoTenant) => {
                self.metrics.login("embed_failure");
                return pages::error(
                    html,
                    StatusCode::NOT_FOUND,
                    "No such tenant",
                    &format!("there is no tenant {id}"),
                    serde_json::Value::Null,
                );
            }
            Err(e) => return internal(html, e),
        };
        self.metrics.login("embed_success");
        let mut r = redirect(StatusCode::SEE_OTHER, clean);
        let lifetime = Duration::from_millis((until - pug_store::now_ms()).max(0) as u64);
        self.set_cookie(
            &mut r,
            self.settings.session_cookie(),
            &self.signer.sign("session", session.expose_secret()),
            lifetime,
        );
        r
    }

    pub(crate) fn set_cookie(&self, r: &mut Response, name: &str, value: &str, ttl: Duration) {
        let secure = if self.settings.secure() {
            "; Secure"
        } else {
            ""
        };
        let v = format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            ttl.as_secs()
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// A CSRF token: the one in the request's cookie if valid, else a new one (set on `r`).
    pub(crate) fn csrf_token(&self, headers: &HeaderMap) -> (String, bool) {
        match cookie(headers, self.settings.csrf_cookie())
            .filter(|c| self.signer.verify("csrf", c).is_some())
        {
            Some(c) => (c.to_owned(), false),
            None => (self.signer.sign("csrf", &pug_auth::random_token()), true),
        }
    }

    pub(crate) fn csrf_ok(&self, headers: &HeaderMap, submitted: &str) -> bool {
        use subtle::ConstantTimeEq;
        match cookie(headers, self.settings.csrf_cookie()) {
            Some(c) if self.signer.verify("csrf", c).is_some() => {
                bool::from(c.as_bytes().ct_eq(submitted.as_bytes()))
            }
            _ => false,
        }
    }
}

/// The session of a verified embed token for `tenant`, ending at `expires_at_ms`: the person
/// is known to Grafana under a login and email of the signing key's namespace (never a pug
/// user's or the admin's; see [`embed::grafana_login`]).
pub(crate) fn session_of_claims(
    tenant: &TenantId,
    v: &embed::Verified,
    expires_at_ms: i64,
) -> SessionRecord {
    let c = &v.claims;
    SessionRecord {
        user: embed::grafana_login(&v.key_id, &c.sub),
        email: embed::grafana_email(&v.key_id, &c.sub),
        display_name: c.name.clone().unwrap_or_else(|| c.sub.clone()),
        scope: Some(EmbedScope {
            tenant: tenant.clone(),
            role: GrafanaRole::parse(&c.role)
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            key_id: v.key_id.clone(),
        }),
        expires_at_ms,
    }
}

/// The value of cookie `name` in the request's `Cookie` header(s).
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
