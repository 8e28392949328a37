//! Embed tokens: short-lived JWTs (HS256) that a customer's webapp signs with a key from
//! `pug embed-key create`, to send a person it already knows straight into their tenant's
//! Grafana.
//!
//! A token is accepted only if: its header says `"alg":"HS256"` (no `none`, no algorithm
//! confusion), its signature verifies (constant time) with the key named by `kid` (or with one
//! of the keys when there is no `kid`), the key may sign for the tenant, `tenant` is the tenant
//! of the URL, `exp` is in the future and at most ten minutes away, and `sub`, `email` and
//! `role` are well formed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use pug_store::EmbedKeyInfo;
use pug_types::{ExposeSecret, SecretString, TenantId};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The longest an embed token may live, in seconds.
pub const MAX_TOKEN_LIFETIME_SECS: i64 = 600;
/// Clock skew tolerated between the webapp and pug, in seconds.
const LEEWAY_SECS: i64 = 30;

/// The claims of an embed token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedClaims {
    /// The tenant the person may enter.
    pub tenant: String,
    /// The person's login in that tenant's Grafana.
    pub sub: String,
    pub email: String,
    /// `Viewer`, `Editor` or `Admin`.
    pub role: String,
    /// Expiry, seconds since the Unix epoch; at most ten minutes after signing.
    pub exp: i64,
    /// A display name (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Why an embed token was refused. The message is shown to the person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    #[error("the token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("the token uses algorithm {0:?}; pug accepts only HS256")]
    UnsupportedAlgorithm(String),
    #[error("the token is signed with a key pug does not know")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token lives longer than {MAX_TOKEN_LIFETIME_SECS} seconds; sign tokens that expire sooner")]
    TooLong,
    #[error("the token is for tenant {token:?}, not {url:?}")]
    WrongTenant { token: String, url: String },
    #[error("the token's claim {0} is missing or invalid")]
    BadClaim(&'static str),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Verifies `token` for `tenant` at `now_secs` against `keys`.
pub fn verify(
    token: &str,
    keys: &[(EmbedKeyInfo, SecretString)],
    tenant: &TenantId,
    now_secs: i64,
) -> Result<EmbedClaims, EmbedError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(EmbedError::Malformed);
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(EmbedError::Malformed)?;
    if header.alg != "HS256" {
        return Err(EmbedError::UnsupportedAlgorithm(header.alg));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| EmbedError::Malformed)?;
    let signed = &token[..h.len() + 1 + p.len()];
    let candidates: Vec<&(EmbedKeyInfo, SecretString)> = match &header.kid {
        Some(kid) => keys.iter().filter(|(k, _)| &k.id == kid).collect(),
        None => keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(EmbedError::UnknownKey);
    }
    let key = candidates
        .into_iter()
        .find(|(_, secret)| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature).is_ok()
        })
        .ok_or(EmbedError::BadSignature)?;
    let claims: EmbedClaims = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(EmbedError::BadClaim("tenant/sub/email/role/exp"))?;
    if claims.exp + LEEWAY_SECS <= now_secs {
        return Err(EmbedError::Expired);
    }
    if claims.exp - now_secs > MAX_TOKEN_LIFETIME_SECS + LEEWAY_SECS {
        return Err(EmbedError::TooLong);
    }
    if claims.tenant != tenant.as_str() {
        return Err(EmbedError::WrongTenant {
            token: claims.tenant,
            url: tenant.to_string(),
        });
    }
    if let Some(scope) = &key.0.tenant {
        if scope != tenant.as_str() {
            return Err(EmbedError::WrongTenant {
                token: scope.clone(),
                url: tenant.to_string(),
            });
        }
    }
    if !crate::auth::valid_login(&claims.sub) {
        return Err(EmbedError::BadClaim("sub"));
    }
    if !crate::auth::valid_email(&claims.email) {
        return Err(EmbedError::BadClaim("email"));
    }
    if crate::auth::GrafanaRole::parse(&claims.role).is_none() {
        return Err(EmbedError::BadClaim("role"));
    }
    if let Some(name) = &claims.name {
        if name.len() > 200 || name.chars().any(char::is_control) {
            return Err(EmbedError::BadClaim("name"));
        }
    }
    Ok(claims)
}

/// Signs `claims` with an embed key: what a customer's webapp does (any JWT library works;
/// this is for tests and examples).
pub fn sign(key_id: &str, key: &str, claims: &EmbedClaims) -> String {
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": key_id});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(EmbedKeyInfo, SecretString)> {
        vec![
            (
                EmbedKeyInfo {
                    id: "ek_any".into(),
                    name: "webapp".into(),
                    tenant: None,
                    created_at_ms: 0,
                },
                SecretString::from("k1-secret".to_owned()),
            ),
            (
                EmbedKeyInfo {
                    id: "ek_bob".into(),
                    name: "bob only".into(),
                    tenant: Some("bob".into()),
                    created_at_ms: 0,
                },
                SecretString::from("k2-secret".to_owned()),
            ),
        ]
    }

    fn claims(tenant: &str, exp: i64) -> EmbedClaims {
        EmbedClaims {
            tenant: tenant.into(),
            sub: "carol".into(),
            email: "carol@example.com".into(),
            role: "Viewer".into(),
            exp,
            name: None,
        }
    }

    #[test]
    fn good_token_verifies() {
        let acme = TenantId::parse("acme").unwrap();
        let t = sign("ek_any", "k1-secret", &claims("acme", 1300));
        assert_eq!(verify(&t, &keys(), &acme, 1000).unwrap().sub, "carol");
    }

    #[test]
    fn bad_tokens_are_refused() {
        let acme = TenantId::parse("acme").unwrap();
        let now = 1000;
        let cases = [
            (
                sign("ek_any", "k1-secret", &claims("acme", 900)),
                EmbedError::Expired,
            ),
            (
                sign("ek_any", "k1-secret", &claims("acme", 5000)),
                EmbedError::TooLong,
            ),
            (
                sign("ek_any", "wrong", &claims("acme", 1300)),
                EmbedError::BadSignature,
            ),
            (
                sign("ek_nope", "k1-secret", &claims("acme", 1300)),
                EmbedError::UnknownKey,
            ),
            (
                sign("ek_any", "k1-secret", &claims("bob", 1300)),
                EmbedError::WrongTenant {
                    token: "bob".into(),
                    url: "acme".into(),
                },
            ),
            (
                sign("ek_bob", "k2-secret", &claims("acme", 1300)),
                EmbedError::WrongTenant {
                    token: "bob".into(),
                    url: "acme".into(),
                },
            ),
        ];
        for (token, want) in cases {
            assert_eq!(verify(&token, &keys(), &acme, now).unwrap_err(), want);
        }
        // Tampered payload: same signature, other claims.
        let good = sign("ek_any", "k1-secret", &claims("acme", 1300));
        let evil = sign(
            "ek_any",
            "k1-secret",
            &EmbedClaims {
                role: "Admin".into(),
                ..claims("acme", 1300)
            },
        );
        let parts: Vec<&str> = good.split('.').collect();
        let evil_parts: Vec<&str> = evil.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], evil_parts[1], parts[2]);
        assert_eq!(
            verify(&tampered, &keys(), &acme, now).unwrap_err(),
            EmbedError::BadSignature
        );
        // alg none.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert!(matches!(
            verify(&none, &keys(), &acme, now).unwrap_err(),
            EmbedError::UnsupportedAlgorithm(_)
        ));
        assert_eq!(
            verify("garbage", &keys(), &acme, now).unwrap_err(),
            EmbedError::Malformed
        );
    }
}
