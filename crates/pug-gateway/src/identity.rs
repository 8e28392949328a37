//! The identity tokens the gateway sends tenants' Grafanas that trust its signature instead of
//! its address (`[auth.jwt]`, the swarm backend: see `pug_auth::gateway_token`).
//!
//! Owns: the signer (its key derived from the store's secret, so every pug replica signs alike)
//! and a small cache, so that a person's steady traffic costs one signature per
//! [`REUSE_SECS`], not one per request.
//!
//! Must not: sign before the pipeline has authorised the request, or hand out a token older
//! than [`REUSE_SECS`] (it stays valid for `LIFETIME_SECS`, well beyond any request).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderValue;
use pug_auth::{GrafanaRole, IdentitySigner};
use pug_store::SessionRecord;
use pug_types::TenantId;

/// A token is reused for this long after it was signed.
pub(crate) const REUSE_SECS: i64 = 60;
/// Tokens kept before the cache is cleared (a bound on memory, not a working-set size).
const MAX_CACHED: usize = 10_000;

pub(crate) struct IdentityTokens {
    signer: IdentitySigner,
    /// (tenant, login, role, email, name) → (token, signed at, seconds).
    cache: Mutex<HashMap<String, (HeaderValue, i64)>>,
}

impl IdentityTokens {
    pub fn new(signer: IdentitySigner) -> Self {
        Self {
            signer,
            cache: Mutex::default(),
        }
    }

    /// The token saying that `who` is `role` in `tenant`, as of `now_secs`.
    pub fn token(
        &self,
        tenant: &TenantId,
        who: &SessionRecord,
        role: GrafanaRole,
        now_secs: i64,
    ) -> HeaderValue {
        let key = format!(
            "{tenant}\0{}\0{}\0{}\0{}",
            who.user,
            role.as_str(),
            who.email,
            who.display_name
        );
        if let Some((token, at)) = crate::throttle::lock(&self.cache).get(&key) {
            if now_secs - at < REUSE_SECS && *at <= now_secs {
                return token.clone();
            }
        }
        // Signed without the lock held: the other request threads keep reading the cache.
        let signed = self.signer.sign(
            tenant,
            &who.user,
            &who.email,
            &who.display_name,
            role,
            now_secs,
        );
        // base64url and dots only: always a valid header value.
        let token = HeaderValue::from_str(&signed).expect("a JWT is a valid header value");
        let mut cache = crate::throttle::lock(&self.cache);
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, (token.clone(), now_secs));
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pug_types::SecretString;

    fn who(user: &str) -> SessionRecord {
        SessionRecord {
            user: user.into(),
            email: format!("{user}@example.com"),
            display_name: user.into(),
            scope: None,
            expires_at_ms: 0,
        }
    }

    #[test]
    fn a_token_is_reused_for_a_minute_and_only_for_the_same_person_role_and_tenant() {
        let tokens = IdentityTokens::new(IdentitySigner::from_secret(&SecretString::from(
            "k".to_owned(),
        )));
        let (acme, globex) = (
            TenantId::parse("acme").unwrap(),
            TenantId::parse("globex").unwrap(),
        );
        let first = tokens.token(&acme, &who("alice"), GrafanaRole::Viewer, 1000);
        let cases = [
            (
                "same, later",
                &acme,
                "alice",
                GrafanaRole::Viewer,
                1000 + REUSE_SECS - 1,
                true,
            ),
            (
                "same, a minute on",
                &acme,
                "alice",
                GrafanaRole::Viewer,
                1000 + REUSE_SECS,
                false,
            ),
            (
                "another role",
                &acme,
                "alice",
                GrafanaRole::Admin,
                1001,
                false,
            ),
            (
                "another person",
                &acme,
                "bob",
                GrafanaRole::Viewer,
                1001,
                false,
            ),
            (
                "another tenant",
                &globex,
                "alice",
                GrafanaRole::Viewer,
                1001,
                false,
            ),
            (
                "a clock gone back",
                &acme,
                "alice",
                GrafanaRole::Viewer,
                999,
                false,
            ),
        ];
        for (what, tenant, user, role, now, reused) in cases {
            let got = tokens.token(tenant, &who(user), role, now);
            assert_eq!(got == first, reused, "{what}");
        }
    }
}
