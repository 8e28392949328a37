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
