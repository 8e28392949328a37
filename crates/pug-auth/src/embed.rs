//! Embed tokens: short-lived JWTs that a customer's webapp signs with a key from `pug
//! embed-key create`, to send a person it already knows straight into their tenant's Grafana.
//! Two kinds of key: HS256 (a shared secret pug generates) and EdDSA (Ed25519: the webapp
//! keeps the private key, pug only the public key, so nothing pug stores can sign a token).
//!
//! A token is accepted only if: its header's `alg` is the algorithm of the key that verifies
//! it (`HS256` or `EdDSA`; no `none`, and no algorithm confusion such as an HS256 token
//! "signed" with an EdDSA public key), its signature verifies (HMAC compared in constant time)
//! with the key named by `kid` (or with one of the keys when there is no `kid`), the key may
//! sign for the tenant, `tenant` is the tenant of the URL, `exp` is in the future and at most
//! ten minutes away, and `sub`, `email`, `role` and `jti` (optional) are well formed.
//!
//! Whom a token signs in, in Grafana: never a pug user and never Grafana's admin. An embed
//! subject's Grafana login and email are namespaced by the key that vouched for it
//! ([`grafana_login`], [`grafana_email`]): `embed:<key id>:<sub>` contains a `:`, which no pug
//! user name can, and the email is in the reserved `.invalid` domain, so a webapp user whose
//! `sub` is `alice` or `admin` (or whose email is a pug user's or `admin@localhost`) is a
//! Grafana user of its own. Two keys never share a subject either (one webapp cannot act as
//! another's users).
//!
//! How long its session lasts ([`session_expiry_ms`]): a token with a `jti` mints one session
//! of `embed_session_ttl` (the gateway refuses a second use of that `jti` with that key); a
//! token without one can be replayed until it expires, so its session ends with the token.
//!
//! Must not: read the store (the gateway hands it the keys), or accept a claim that could
//! inject a header.

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
pub const LEEWAY_SECS: i64 = 30;
/// The longest `jti` accepted, in bytes (a UUID is 36).
pub const MAX_JTI_LEN: usize = 128;
/// The longest `kid` that can name a key (pug's key ids are 19 or 27 bytes): a longer one is
/// refused before any lookup, so made-up ids cannot grow the gateway's memory.
pub const MAX_KID_LEN: usize = 64;
/// The shortest session a token mints, so that the redirect after it still finds it.
const MIN_SESSION_MS: i64 = 60_000;

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
    /// A unique id of this token (optional, RFC 7519 §4.1.7): a token with one is used once;
    /// a token without one can be replayed until `exp`, and its session ends then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A verified token: its claims and the id of the key that verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub claims: EmbedClaims,
    pub key_id: String,
}

/// Why an embed token was refused. The message is shown to the person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    #[error("the token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("the token uses algorithm {0:?}; pug accepts HS256 and EdDSA, each only with a key of that kind")]
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
    #[error(
        "the token was already used (its jti was seen before); sign a new token for each sign-in"
    )]
    Replayed,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn header_of(token: &str) -> Result<(Header, [&str; 3]), EmbedError> {
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
    Ok((header, [h, p, s]))
}

/// The `kid` of a token's header (`Some("")` when it has none), or `None` if the token is
/// malformed or its `kid` cannot name any key (longer than [`MAX_KID_LEN`]).
pub fn key_id_of(token: &str) -> Option<String> {
    let (header, _) = header_of(token).ok()?;
    let kid = header.kid.unwrap_or_default();
    (kid.len() <= MAX_KID_LEN).then_some(kid)
}

/// Verifies `token` for `tenant` at `now_secs` against `keys`.
pub fn verify(
    token: &str,
    keys: &[(EmbedKeyInfo, SecretString)],
    tenant: &TenantId,
    now_secs: i64,
) -> Result<Verified, EmbedError> {
    let (header, [h, p, s]) = header_of(token)?;
    if header.alg != HS256 && header.alg != EDDSA {
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
    // Only keys of the token's algorithm are tried: the header cannot turn a public key into
    // an HMAC secret.
    let candidates: Vec<_> = candidates
        .into_iter()
        .filter(|(k, _)| k.algorithm == header.alg)
        .collect();
    if candidates.is_empty() {
        return Err(EmbedError::UnsupportedAlgorithm(header.alg));
    }
    let key = candidates
        .into_iter()
        .find(|(_, secret)| verifies(&header.alg, secret, signed.as_bytes(), &signature))
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
    if !crate::identity::valid_login(&claims.sub) {
        return Err(EmbedError::BadClaim("sub"));
    }
    if !crate::identity::valid_email(&claims.email) {
        return Err(EmbedError::BadClaim("email"));
    }
    if crate::identity::GrafanaRole::parse(&claims.role).is_none() {
        return Err(EmbedError::BadClaim("role"));
    }
    if let Some(name) = &claims.name {
        if name.len() > 200 || name.chars().any(char::is_control) {
            return Err(EmbedError::BadClaim("name"));
        }
    }
    if let Some(jti) = &claims.jti {
        if jti.is_empty() || jti.len() > MAX_JTI_LEN || !jti.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EmbedError::BadClaim("jti"));
        }
    }
    Ok(Verified {
        claims,
        key_id: key.0.id.clone(),
    })
}

/// The Grafana login of embed subject `sub` vouched for by key `key_id`: `embed:<key>:<sub>`.
/// The `:` is in no pug user name ([`crate::identity::valid_login`]) nor in a key id, so this is
/// never a pug user's login, Grafana's admin's, or another key's subject's.
pub fn grafana_login(key_id: &str, sub: &str) -> String {
    format!("embed:{key_id}:{sub}")
}

/// The Grafana email of embed subject `sub` vouched for by key `key_id`:
/// `<sub>+<key>@embed.invalid` (an `@` in `sub` written `=`, which `sub` cannot contain, so
/// that distinct subjects keep distinct emails). Grafana looks users up by email before login,
/// so the token's own `email` is not passed on: it could be a pug user's or `admin@localhost`.
/// `.invalid` (RFC 2606) is no one's real domain.
pub fn grafana_email(key_id: &str, sub: &str) -> String {
    format!("{}+{key_id}@embed.invalid", sub.replace('@', "="))
}

/// When the session a verified token mints ends, in ms since the epoch: after `ttl_ms` for a
/// token with a `jti` (it is used once); at the token's own expiry for one without (anyone
/// holding it could mint sessions until then anyway). Never sooner than a minute from now.
pub fn session_expiry_ms(claims: &EmbedClaims, now_ms: i64, ttl_ms: i64) -> i64 {
    let until = match claims.jti {
        Some(_) => now_ms.saturating_add(ttl_ms),
        None => claims.exp.saturating_mul(1000),
    };
    until.max(now_ms + MIN_SESSION_MS)
}

/// Until when a token's `jti` must be remembered (ms since the epoch): as long as the token
/// could still be accepted.
pub fn remember_jti_until_ms(claims: &EmbedClaims) -> i64 {
    claims.exp.saturating_add(LEEWAY_SECS).saturating_mul(1000)
}

/// The JWT `alg` of HMAC-SHA256 keys.
pub const HS256: &str = "HS256";
/// The JWT `alg` of Ed25519 keys (RFC 8037).
pub const EDDSA: &str = "EdDSA";

/// Whether `signature` is `alg`'s signature of `signed` under `key` (the HS256 secret, or the
/// EdDSA public key in PEM).
fn verifies(alg: &str, key: &SecretString, signed: &[u8], signature: &[u8]) -> bool {
    match alg {
        HS256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(signed);
            mac.verify_slice(signature).is_ok()
        }
        EDDSA => {
            let Ok(public) = parse_public_key(key.expose_secret()) else {
                return false;
            };
            let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
                return false;
            };
            // Strict verification: no malleable or small-order signatures.
            public.verify_strict(signed, &signature).is_ok()
        }
        _ => false,
    }
}

/// Why an EdDSA public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 public key in PEM (\"-----BEGIN PUBLIC KEY-----\"); make one with `openssl genpkey -algorithm ed25519 -out webapp.key && openssl pkey -in webapp.key -pubout`")]
pub struct BadPublicKey;

/// Parses an Ed25519 public key in PEM (SubjectPublicKeyInfo, as `openssl pkey -pubout`
/// writes it).
pub fn parse_public_key(pem: &str) -> Result<ed25519_dalek::VerifyingKey, BadPublicKey> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim()).map_err(|_| BadPublicKey)
}

/// A fresh Ed25519 key pair as PEM: (private key, PKCS#8; public key, SPKI).
pub fn generate_ed25519() -> (SecretString, String) {
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key encodes as PKCS#8");
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 key encodes as SPKI");
    (SecretString::from(private.to_string()), public)
}

fn signing_input(alg: &str, key_id: &str, claims: &EmbedClaims) -> String {
    let header = serde_json::json!({"alg": alg, "typ": "JWT", "kid": key_id});
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"))
    )
}

/// Signs `claims` with an HS256 embed key: what a customer's webapp does (any JWT library
/// works; this is for tests and examples).
pub fn sign(key_id: &str, key: &str, claims: &EmbedClaims) -> String {
    let signed = signing_input(HS256, key_id, claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Signs `claims` with an Ed25519 private key (PKCS#8 PEM), as a webapp does with an EdDSA
/// embed key. `None` if the key is not one.
pub fn sign_eddsa(key_id: &str, private_pem: &str, claims: &EmbedClaims) -> Option<String> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use ed25519_dalek::Signer;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem.trim()).ok()?;
    let signed = signing_input(EDDSA, key_id, claims);
    let signature = key.sign(signed.as_bytes());
    Some(format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    ))
}

#[cfg(test)]
mod tests;
