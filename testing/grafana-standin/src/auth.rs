//! Authentication: who a request is signed in as, from Grafana's auth proxy headers
//! (`[auth.proxy]`, docs `configure-authentication/auth-proxy`) or basic auth with the admin user.
//!
//! * auth proxy enabled and the `header_name` header present: if the peer address is outside
//!   `whitelist` the request is refused ([`Identity::Refused`]) and never served as that user;
//!   otherwise the user is the header value (a login, or an email with
//!   `header_property = email`), with `Email`/`Name`/`Role`/`Groups`/`Login` from `headers`.
//!   Like Grafana's user sync, an existing account is found by login or by email (case
//!   insensitive): a header naming the admin account's login (`[security] admin_user`, as
//!   seeded) or email (`admin_email`) signs in AS the server admin (`isGrafanaAdmin`), whatever
//!   role header comes with it.
//! * `[auth.jwt]` enabled and its `header_name` header present: the token must verify with
//!   `key_file`'s key and pass `exp`, `iat` and `expect_claims` ([`Identity::InvalidJwt`]
//!   otherwise, answered 401 and never served as anyone); the user is `username_claim`, with
//!   `email_claim`, the `name` claim and the org role from `role_attribute_path` (with
//!   `role_attribute_strict`, a token without a valid role is refused). The admin account is
//!   found by login or email as with the auth proxy, but `isGrafanaAdmin` only with
//!   `allow_assign_grafana_admin`.
//! * `Authorization: Basic` for `[security] admin_user` (`[auth.basic] enabled`, Grafana's
//!   default) with the password the database was seeded with.
//! * otherwise anonymous.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::settings::Settings;

/// A signed-in user.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub login: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub groups: Vec<String>,
    #[serde(rename = "isGrafanaAdmin")]
    pub is_grafana_admin: bool,
    /// `auth.proxy` or `basic`.
    #[serde(rename = "authenticatedBy")]
    pub authenticated_by: &'static str,
}

/// The outcome of authentication for one request.
#[derive(Debug, Clone)]
pub enum Identity {
    Anonymous,
    User(User),
    /// The auth proxy header came from outside the whitelist (message is Grafana's wording).
    Refused(String),
    /// Wrong basic auth credentials.
    BadCredentials,
    /// The `[auth.jwt]` header's token did not verify (why, for the log).
    InvalidJwt(String),
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    if name.is_empty() {
        return "";
    }
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
}

/// Authenticates one request.
pub fn authenticate(
    settings: &Settings,
    admin_password_sha256: &str,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Identity {
    let jwt = &settings.auth_jwt;
    if jwt.enabled && !jwt.header_name.is_empty() {
        let token = header(headers, &jwt.header_name);
        if !token.is_empty() {
            return match verify_jwt(settings, token, now_secs()) {
                Ok(user) => Identity::User(user),
                Err(why) => Identity::InvalidJwt(why),
            };
        }
    }
    let ap = &settings.auth_proxy;
    if ap.enabled {
        let value = header(headers, &ap.header_name);
        if !value.is_empty() {
            let allowed =
                ap.whitelist.is_empty() || ap.whitelist.iter().any(|n| n.contains(peer.ip()));
            if !allowed {
                return Identity::Refused(format!(
                    "Request for user ({value}) from {} is not from the authentication proxy",
                    peer.ip().to_canonical()
                ));
            }
            let extra = |field: &str| {
                ap.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(field))
                    .map(|(_, h)| header(headers, h).to_string())
                    .filter(|v| !v.is_empty())
            };
            let (login, email) = if ap.header_property == "email" {
                (value.to_string(), value.to_string())
            } else {
                (value.to_string(), String::new())
            };
            let login = extra("Login").unwrap_or(login);
            let email = extra("Email").unwrap_or(email);
            let is_admin = (!settings.admin_user.is_empty()
                && login.eq_ignore_ascii_case(&settings.admin_user))
                || (!email.is_empty()
                    && !settings.admin_email.is_empty()
                    && email.eq_ignore_ascii_case(&settings.admin_email));
            let login = if is_admin {
                settings.admin_user.clone()
            } else {
                login
            };
            return Identity::User(User {
                name: extra("Name").unwrap_or_else(|| login.clone()),
                role: extra("Role").unwrap_or_else(|| ap.auto_assign_org_role.clone()),
                groups: extra("Groups")
                    .map(|g| g.split(',').map(|s| s.trim().to_string()).collect())
                    .unwrap_or_default(),
                login,
                email,
                is_grafana_admin: is_admin,
                authenticated_by: "auth.proxy",
            });
        }
    }
    if settings.basic_auth {
        if let Some(creds) = header(headers, "authorization").strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(creds.trim())
                .unwrap_or_default();
            let decoded = String::from_utf8_lossy(&decoded);
            let (user, pass) = decoded.split_once(':').unwrap_or((&decoded, ""));
            let pass_hash = hex::encode(Sha256::digest(pass.as_bytes()));
            if user == settings.admin_user && pass_hash == admin_password_sha256 {
                return Identity::User(User {
                    login: user.to_string(),
                    email: settings.admin_email.clone(),
                    name: String::new(),
                    role: "Admin".to_string(),
                    groups: Vec::new(),
                    is_grafana_admin: true,
                    authenticated_by: "basic",
                });
            }
            return Identity::BadCredentials;
        }
    }
    Identity::Anonymous
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Verifies an `[auth.jwt]` token at `now` (seconds) and maps its claims to a user.
pub fn verify_jwt(settings: &Settings, token: &str, now: i64) -> Result<User, String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = &settings.auth_jwt;
    let key = jwt.key.ok_or("jwt auth not configured")?;
    // Grafana strips `=` padding before parsing.
    let token = token.replace('=', "");
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, sig] = parts[..] else {
        return Err("go-jose/go-jose: compact JWS format must have three parts".into());
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("invalid JWT header")?;
    if header["alg"] != "EdDSA" {
        return Err(format!("unexpected signature algorithm {}", header["alg"]));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "invalid signature encoding")?;
    let signature =
        ed25519_dalek::Signature::from_slice(&signature).map_err(|_| "invalid signature")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| "invalid key")?;
    key.verify_strict(format!("{h}.{p}").as_bytes(), &signature)
        .map_err(|_| "go-jose/go-jose: error in cryptographic primitive".to_string())?;
    let claims: serde_json::Map<String, serde_json::Value> = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("invalid JWT claims")?;
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64())
        .ok_or("missing 'exp' claim")?;
    if now > exp {
        return Err("go-jose/go-jose/jwt: validation failed, token is expired (exp)".into());
    }
    if claims
        .get("iat")
        .and_then(|v| v.as_i64())
        .is_some_and(|iat| iat > now)
    {
        return Err(
            "go-jose/go-jose/jwt: validation field, token issued in the future (iat)".into(),
        );
    }
    for (name, want) in &jwt.expect_claims {
        let got = claims.get(name);
        let ok = match (name.as_str(), got, want) {
            // go-jose: `aud` may be one string or a list; the expected audience must be in it.
            ("aud", Some(serde_json::Value::Array(list)), serde_json::Value::String(w)) => {
                list.iter().any(|a| a == w)
            }
            _ => got == Some(want),
        };
        if !ok {
            return Err(format!("'{name}' claim mismatch"));
        }
    }
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let login = text(&jwt.username_claim);
    let email = text(&jwt.email_claim);
    if login.is_empty() && email.is_empty() {
        return Err("missing login and email claims in JWT".into());
    }
    let role = text(&jwt.role_attribute_path);
    let role = match role.as_str() {
        "Viewer" | "Editor" | "Admin" => role,
        "GrafanaAdmin" if jwt.allow_assign_grafana_admin => "Admin".into(),
        _ if jwt.role_attribute_strict => {
            return Err(
                "invalid role: role_attribute_strict is set and the token has no valid role".into(),
            )
        }
        _ => settings.auth_proxy.auto_assign_org_role.clone(),
    };
    let is_admin_account = (!settings.admin_user.is_empty()
        && login.eq_ignore_ascii_case(&settings.admin_user))
        || (!email.is_empty()
            && !settings.admin_email.is_empty()
            && email.eq_ignore_ascii_case(&settings.admin_email));
    if !is_admin_account && !jwt.auto_sign_up {
        // The stand-in keeps no users but the admin: anyone else would be a new user.
        return Err("user not found and auto_sign_up is off".into());
    }
    let login = if is_admin_account {
        settings.admin_user.clone()
    } else if login.is_empty() {
        email.clone()
    } else {
        login
    };
    Ok(User {
        name: Some(text("name"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| login.clone()),
        role,
        groups: Vec::new(),
        login,
        email,
        is_grafana_admin: is_admin_account,
        authenticated_by: "jwt",
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    use super::*;
    use crate::settings::LoadInput;

    fn sign(key: &SigningKey, alg: &str, claims: &serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let sig = key.sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    fn settings(dir: &std::path::Path, key: &SigningKey) -> Settings {
        let pem = dir.join("key.pem");
        std::fs::write(
            &pem,
            key.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        let env: HashMap<String, String> = [
            ("GF_AUTH_JWT_ENABLED", "true"),
            ("GF_AUTH_JWT_HEADER_NAME", "X-Pug-Identity"),
            ("GF_AUTH_JWT_USERNAME_CLAIM", "sub"),
            ("GF_AUTH_JWT_EMAIL_CLAIM", "email"),
            ("GF_AUTH_JWT_KEY_FILE", pem.to_str().unwrap()),
            (
                "GF_AUTH_JWT_EXPECT_CLAIMS",
                r#"{"iss":"pug","aud":"pug:acme"}"#,
            ),
            ("GF_AUTH_JWT_ROLE_ATTRIBUTE_PATH", "role"),
            ("GF_AUTH_JWT_ROLE_ATTRIBUTE_STRICT", "true"),
            ("GF_AUTH_JWT_AUTO_SIGN_UP", "true"),
            ("GF_SECURITY_ADMIN_USER", "pug-admin"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        Settings::load(&LoadInput {
            home: dir,
            config: None,
            cfg_args: &[],
            env: &env,
        })
        .unwrap()
    }

    #[test]
    fn a_jwt_signs_in_only_when_it_verifies_and_its_claims_are_the_expected_ones() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let s = settings(dir.path(), &key);
        let now = 1_000_000;
        let good = json!({"iss": "pug", "aud": "pug:acme", "sub": "alice",
            "email": "alice@example.com", "name": "Alice", "role": "Editor",
            "iat": now - 60, "exp": now + 300});
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        let user = verify_jwt(&s, &sign(&key, "EdDSA", &good), now).unwrap();
        assert_eq!(
            (
                user.login.as_str(),
                user.email.as_str(),
                user.name.as_str(),
                user.role.as_str()
            ),
            ("alice", "alice@example.com", "Alice", "Editor")
        );
        assert_eq!(
            (user.authenticated_by, user.is_grafana_admin),
            ("jwt", false)
        );
        let mut no_role = good.clone();
        no_role.as_object_mut().unwrap().remove("role");
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let refused = [
            ("another key", sign(&other, "EdDSA", &good)),
            (
                "another tenant",
                sign(&key, "EdDSA", &with("aud", json!("pug:globex"))),
            ),
            (
                "another issuer",
                sign(&key, "EdDSA", &with("iss", json!("evil"))),
            ),
            ("expired", sign(&key, "EdDSA", &with("exp", json!(now - 1)))),
            (
                "issued in the future",
                sign(&key, "EdDSA", &with("iat", json!(now + 5))),
            ),
            ("no exp", sign(&key, "EdDSA", &no_exp)),
            ("no role (strict)", sign(&key, "EdDSA", &no_role)),
            (
                "an invalid role",
                sign(&key, "EdDSA", &with("role", json!("Owner"))),
            ),
            ("alg none", sign(&key, "none", &good)),
            ("claims swapped after signing", {
                let t = sign(&key, "EdDSA", &good);
                let forged = URL_SAFE_NO_PAD.encode(with("role", json!("Admin")).to_string());
                let p: Vec<&str> = t.split('.').collect();
                format!("{}.{forged}.{}", p[0], p[2])
            }),
            ("two parts", "a.b".to_string()),
        ];
        for (what, token) in refused {
            assert!(verify_jwt(&s, &token, now).is_err(), "{what} was accepted");
        }
        // The header decides: with it, a bad token is refused even if auth-proxy headers come too.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-pug-identity",
            sign(&other, "EdDSA", &good).parse().unwrap(),
        );
        headers.insert("x-webauth-user", "alice".parse().unwrap());
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            authenticate(&s, "", &headers, peer),
            Identity::InvalidJwt(_)
        ));
        // An audience list containing the expected one passes, as with go-jose.
        let listed = with("aud", json!(["pug:globex", "pug:acme"]));
        assert!(verify_jwt(&s, &sign(&key, "EdDSA", &listed), now).is_ok());
    }

    #[test]
    fn a_grafana_with_jwt_on_but_no_usable_key_does_not_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
        for key_file in ["", "bad.pem", "missing.pem"] {
            let path = dir.path().join(key_file);
            let env: HashMap<String, String> = [
                ("GF_AUTH_JWT_ENABLED".to_string(), "true".to_string()),
                (
                    "GF_AUTH_JWT_KEY_FILE".to_string(),
                    if key_file.is_empty() {
                        String::new()
                    } else {
                        path.display().to_string()
                    },
                ),
            ]
            .into();
            let got = Settings::load(&LoadInput {
                home: dir.path(),
                config: None,
                cfg_args: &[],
                env: &env,
            });
            assert!(got.is_err(), "{key_file:?}: started");
        }
    }
}
