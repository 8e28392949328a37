//! The Grafana settings of one instance: only Grafana's own settings, nothing patched.
//!
//! Owns: [`InstanceSpec`] and its translation into `grafana.ini` settings (see
//! `research/multitenant.md` §2), in three layers: pug's defaults (sign-up off, update checks
//! off), then the tenant's own overrides, then what pug enforces: `root_url` and
//! `serve_from_sub_path`, how Grafana knows the gateway ([`GatewayTrust`]: `auth.proxy` with the
//! gateway as the only whitelisted sender, or `auth.jwt` with the gateway's public key), a
//! server admin whose login and email nobody signed in through the gateway can have
//! ([`InstanceSpec::ADMIN_LOGIN`], [`InstanceSpec::admin_email`]), `csrf_always_check`, the
//! operator's datasource proxy whitelist, plugin preinstall off unless allowed, the database,
//! the renderer, and the per-tenant `admin_password` and `secret_key`. Enforced settings come
//! last so that every backend applies pug's value.
//!
//! Must not: decide where files go or how a value reaches Grafana (ini file, environment,
//! Docker secret). Backends do that with [`Setting::value`].

use std::collections::BTreeMap;

use pug_types::{ExposeSecret, GrafanaVersion, Overrides, SecretString, TenantId};
use sha2::{Digest, Sha256};

/// The header the gateway's identity token comes in (`pug_auth::gateway_token::HEADER`).
pub const JWT_HEADER: &str = "X-Pug-Identity";
/// The issuer the tenant's Grafana expects (`pug_auth::gateway_token::ISSUER`); the audience
/// is `pug:<tenant>` (`pug_auth::gateway_token::audience`).
pub const JWT_ISSUER: &str = "pug";

use crate::InstanceSecrets;

/// Everything one replica of a tenant must be.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub tenant: TenantId,
    pub replica: u32,
    pub version: GrafanaVersion,
    /// The tenant's public URL (`server.root_url`), ending in `/`.
    pub root_url: String,
    /// Whether Grafana serves under `root_url`'s path (path routing).
    pub serve_from_sub_path: bool,
    /// How the tenant's Grafana knows that a request comes from pug's gateway.
    pub gateway: GatewayTrust,
    /// The port this replica listens on (allocated by the controller; unique on the machine).
    pub port: u16,
    pub secrets: InstanceSecrets,
    pub database: DatabaseSettings,
    /// `rendering.server_url` and `callback_url`, when a renderer is wired.
    pub rendering: Option<RenderingSettings>,
    /// Whether Grafana's plugin preinstaller may reach grafana.com on start.
    pub plugin_preinstall: bool,
    /// `host:port` entries the tenant's datasource proxy may reach
    /// (`security.data_source_proxy_whitelist`; empty: Grafana allows every host).
    pub data_source_proxy_whitelist: Vec<String>,
    pub overrides: Overrides,
    /// Datasources and dashboards provisioned into this Grafana.
    pub provisioning: crate::Provisioning,
}

/// How a tenant's Grafana knows who a request through pug's gateway is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayTrust {
    /// `[auth.proxy]`: the identity headers count only from these addresses (the gateway's).
    /// Sound where the gateway's address is fixed and nobody else can take it (loopback with
    /// the process backend's firewall rule, pug's address on a docker bridge).
    Addresses(Vec<String>),
    /// `[auth.jwt]`: the identity is a token the gateway signed
    /// (`pug_auth::gateway_token`), verified with `public_key_pem`, which the backend delivers
    /// at `key_file`; `auth.proxy` is off. For the swarm backend, where pug's replicas have no
    /// fixed addresses and every tenant's task shares the overlay.
    Signature {
        public_key_pem: String,
        key_file: String,
    },
}

/// Where the tenant's Grafana keeps its database.
#[derive(Clone, Debug)]
pub enum DatabaseSettings {
    /// `grafana.db` in the replica's data directory (one replica only).
    Sqlite,
    /// A database of its own on a shared PostgreSQL server.
    Postgres {
        /// `host:port`.
        host: String,
        name: String,
        user: String,
        password: SecretString,
        ssl_mode: String,
    },
}

/// The renderer a tenant's Grafana uses.
#[derive(Clone, Debug)]
pub struct RenderingSettings {
    pub server_url: String,
    pub callback_url: String,
}

/// One setting's value.
#[derive(Clone, Debug)]
pub enum Value {
    Plain(String),
    /// A secret: backends keep it out of environments and logs where they can.
    Secret(SecretString),
}

/// One `grafana.ini` setting.
#[derive(Clone, Debug)]
pub struct Setting {
    pub section: String,
    pub key: String,
    pub value: Value,
}

impl Setting {
    /// The `GF_<SECTION>_<KEY>` environment variable Grafana reads this setting from.
    pub fn env_name(&self) -> String {
        pug_types::grafana_env_name(&self.section, &self.key)
    }
}

impl InstanceSpec {
    /// The path part of `root_url` (`/t/acme/` in path mode, `/` in host mode).
    pub fn root_path(&self) -> String {
        match self.root_url.find("://") {
            Some(i) => {
                let rest = &self.root_url[i + 3..];
                match rest.find('/') {
                    Some(j) if self.serve_from_sub_path => rest[j..].to_owned(),
                    _ => "/".to_owned(),
                }
            }
            None => "/".to_owned(),
        }
    }

    /// The login of the tenant's Grafana server admin (`security.admin_user`). Its `+` is a
    /// character pug user names and embed subjects cannot contain (`[a-z0-9._@-]`), so no
    /// person signed in through the gateway is ever looked up as this account. (Not `:`, which
    /// would break HTTP basic auth for the account: Basic splits at the first `:`.)
    pub const ADMIN_LOGIN: &'static str = "pug+admin";

    /// The email of the tenant's Grafana server admin (`security.admin_email`): derived from
    /// the tenant's `secret_key`, so nobody can guess it, on the reserved `.invalid` domain
    /// (RFC 2606), so it is nobody's address. Grafana also finds auth-proxy users by email;
    /// a signed-in person whose email were `admin@localhost` (Grafana's default) would
    /// otherwise be the admin.
    pub fn admin_email(&self) -> String {
        let digest = Sha256::digest(
            format!(
                "pug admin email\0{}",
                self.secrets.secret_key.expose_secret()
            )
            .as_bytes(),
        );
        format!("pug-admin-{}@pug.invalid", &hex::encode(digest)[..16])
    }

    /// Every setting, in the order Grafana would apply them: pug's defaults a tenant may
    /// override, then the tenant's overrides, then the settings pug enforces (none of which an
    /// override can name, see `pug_types::Overrides`; they come last anyway, so that every
    /// backend applies pug's value whatever was stored: an ini file keeps the last value of a
    /// key, a container keeps the last of duplicate variables), then the secrets.
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        let mut plain = |section: &str, key: &str, value: &str| {
            out.push(Setting {
                section: section.into(),
                key: key.into(),
                value: Value::Plain(value.into()),
            })
        };
        // Defaults a tenant may change.
        plain("auth", "disable_signout_menu", "true");
        plain("users", "allow_sign_up", "false");
        plain("users", "allow_org_create", "false");
        plain("analytics", "reporting_enabled", "false");
        plain("analytics", "check_for_updates", "false");
        plain("analytics", "check_for_plugin_updates", "false");
        plain("snapshots", "external_enabled", "false");
        // The tenant's overrides.
        for (section, key, value) in self.overrides.applicable() {
            plain(section, key, value);
        }
        // What pug enforces.
        plain("server", "http_port", &self.port.to_string());
        plain("server", "root_url", &self.root_url);
        plain(
            "server",
            "serve_from_sub_path",
            if self.serve_from_sub_path {
                "true"
            } else {
                "false"
            },
        );
        match &self.gateway {
            GatewayTrust::Addresses(whitelist) => {
                plain("auth.proxy", "enabled", "true");
                plain("auth.proxy", "header_name", "X-WEBAUTH-USER");
                plain("auth.proxy", "header_property", "username");
                plain("auth.proxy", "auto_sign_up", "true");
                plain(
                    "auth.proxy",
                    "headers",
                    "Email:X-WEBAUTH-EMAIL Role:X-WEBAUTH-ROLE Name:X-WEBAUTH-NAME",
                );
                plain("auth.proxy", "whitelist", &whitelist.join(", "));
            }
            GatewayTrust::Signature { key_file, .. } => {
                // Grafana's `[auth.jwt]` (`pkg/services/auth/jwt`, `authn/clients/jwt.go`):
                // the token in `header_name`, verified with the PEM in `key_file`, `iss` and
                // `aud` as `expect_claims` say, the org role from the `role` claim (strict: a
                // token without a valid role signs nobody in).
                plain("auth.proxy", "enabled", "false");
                plain("auth.jwt", "enabled", "true");
                plain("auth.jwt", "header_name", JWT_HEADER);
                plain("auth.jwt", "username_claim", "sub");
                plain("auth.jwt", "email_claim", "email");
                plain("auth.jwt", "key_file", key_file);
                plain(
                    "auth.jwt",
                    "expect_claims",
                    &serde_json::json!({"iss": JWT_ISSUER, "aud": format!("pug:{}", self.tenant)})
                        .to_string(),
                );
                plain("auth.jwt", "role_attribute_path", "role");
                plain("auth.jwt", "role_attribute_strict", "true");
                plain("auth.jwt", "allow_assign_grafana_admin", "false");
                plain("auth.jwt", "auto_sign_up", "true");
                plain("auth.jwt", "url_login", "false");
            }
        }
        // A per-tenant cookie name, so tenants that share a host (path mode) never read each
        // other's Grafana session cookie.
        plain(
            "auth",
            "login_cookie_name",
            &format!("grafana_session_{}", self.tenant.as_str().replace('-', "_")),
        );
        plain("security", "admin_user", Self::ADMIN_LOGIN);
        plain("security", "admin_email", &self.admin_email());
        plain("security", "disable_initial_admin_creation", "false");
        // Sibling tenant hosts are same-site: Grafana's CSRF check must not depend on its
        // login cookie being present.
        plain("security", "csrf_always_check", "true");
        // Hosts the tenant's datasource proxy may reach (Grafana: empty is every host).
        plain(
            "security",
            "data_source_proxy_whitelist",
            &self.data_source_proxy_whitelist.join(" "),
        );
        // Cloud credentials of the machine (or container) Grafana runs on are pug's, not the
        // tenant's: AWS datasources use the tenant's own keys only (not the SDK's default chain,
        // a credentials file or the instance role), Azure ones never the machine's identity.
        plain("aws", "allowed_auth_providers", "keys");
        plain("azure", "managed_identity_enabled", "false");
        plain("azure", "workload_identity_enabled", "false");
        plain("server", "static_root_path", "public");
        plain("panels", "disable_sanitize_html", "false");
        plain(
            "plugins",
            "preinstall_disabled",
            if self.plugin_preinstall {
                "false"
            } else {
                "true"
            },
        );
        match &self.database {
            DatabaseSettings::Sqlite => {
                plain("database", "type", "sqlite3");
                plain("database", "path", "grafana.db");
            }
            DatabaseSettings::Postgres {
                host,
                name,
                user,
                ssl_mode,
                ..
            } => {
                plain("database", "type", "postgres");
                plain("database", "host", host);
                plain("database", "name", name);
                plain("database", "user", user);
                plain("database", "ssl_mode", ssl_mode);
            }
        }
        if let Some(r) = &self.rendering {
            plain("rendering", "server_url", &r.server_url);
            plain("rendering", "callback_url", &r.callback_url);
        }
        let mut secret = |section: &str, key: &str, value: &SecretString| {
            out.push(Setting {
                section: section.into(),
                key: key.into(),
                value: Value::Secret(value.clone()),
            })
        };
        secret("security", "admin_password", &self.secrets.admin_password);
        secret("security", "secret_key", &self.secrets.secret_key);
        if let DatabaseSettings::Postgres { password, .. } = &self.database {
            secret("database", "password", password);
        }
        if let (Some(_), Some(token)) = (&self.rendering, &self.secrets.renderer_token) {
            secret("rendering", "renderer_token", token);
        }
        out
    }

    /// A short hash of every setting (secrets included, hashed): a running instance whose hash
    /// differs from this one runs an outdated spec and is replaced.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.version.to_string());
        for s in self.settings() {
            h.update([0]);
            h.update(&s.section);
            h.update([0]);
            h.update(&s.key);
            h.update([0]);
            match &s.value {
                Value::Plain(v) => h.update(v),
                Value::Secret(v) => h.update(v.expose_secret()),
            }
        }
        self.provisioning.hash_into(&mut h);
        // The key itself reaches Grafana as a file, not a setting: a new key rolls too.
        if let GatewayTrust::Signature { public_key_pem, .. } = &self.gateway {
            h.update([1]);
            h.update(public_key_pem);
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// Renders settings as a `grafana.ini` document, secrets included: write it only to a file
/// that only pug's user can read.
pub fn render_ini(settings: &[Setting], extra: &[(&str, &str, String)]) -> String {
    let mut sections: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
    for (section, key, value) in extra {
        sections
            .entry(section)
            .or_default()
            .push((key, value.clone()));
    }
    for s in settings {
        let value = match &s.value {
            Value::Plain(v) => v.clone(),
            Value::Secret(v) => v.expose_secret().to_owned(),
        };
        let entries = sections.entry(&s.section).or_default();
        entries.retain(|(k, _)| *k != s.key);
        entries.push((&s.key, value));
    }
    let mut out = String::from("; Written by pug. Do not edit: pug rewrites it on every change.\n");
    for (section, entries) in sections {
        out.push_str(&format!("\n[{section}]\n"));
        for (key, value) in entries {
            // Triple quotes let values contain `#` and `;`, which would start a comment.
            if value.contains(['#', ';']) {
                out.push_str(&format!("{key} = \"\"\"{value}\"\"\"\n"));
            } else {
                out.push_str(&format!("{key} = {value}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            tenant: TenantId::parse("acme").unwrap(),
            replica: 0,
            version: GrafanaVersion::parse("11.3.0").unwrap(),
            root_url: "http://127.0.0.1:8080/t/acme/".into(),
            serve_from_sub_path: true,
            gateway: GatewayTrust::Addresses(vec!["127.0.0.1".into()]),
            port: 20001,
            secrets: InstanceSecrets {
                admin_password: SecretString::from("pw#1"),
                secret_key: SecretString::from("sk"),
                renderer_token: None,
            },
            database: DatabaseSettings::Sqlite,
            rendering: None,
            plugin_preinstall: false,
            data_source_proxy_whitelist: Vec::new(),
            overrides: Overrides::default(),
            provisioning: Default::default(),
        }
    }

    #[test]
    fn renders_grafana_settings() {
        let mut s = spec();
        s.overrides.set("server.enable_gzip=true").unwrap();
        let ini = render_ini(&s.settings(), &[("paths", "data", "/d".into())]);
        assert!(ini.contains("[auth.proxy]\nenabled = true\n"));
        assert!(ini.contains("whitelist = 127.0.0.1\n"));
        assert!(ini.contains("root_url = http://127.0.0.1:8080/t/acme/\n"));
        assert!(ini.contains("admin_password = \"\"\"pw#1\"\"\"\n"));
        assert!(ini.contains("enable_gzip = true\n"));
        assert!(ini.contains("[paths]\ndata = /d\n"));
        assert_eq!(s.root_path(), "/t/acme/");
        assert!(!ini.contains("[auth.jwt]"), "{ini}");
    }

    #[test]
    fn a_grafana_that_trusts_a_signature_takes_no_auth_proxy_header() {
        let mut s = spec();
        s.gateway = GatewayTrust::Signature {
            public_key_pem: "-----BEGIN PUBLIC KEY-----\n...".into(),
            key_file: "/etc/grafana/pug-gateway.pem".into(),
        };
        let ini = render_ini(&s.settings(), &[]);
        assert!(ini.contains("[auth.proxy]\nenabled = false\n"), "{ini}");
        assert!(!ini.contains("\nwhitelist ="), "{ini}");
        for line in [
            "[auth.jwt]\nenabled = true\n",
            "header_name = X-Pug-Identity\n",
            "username_claim = sub\n",
            "key_file = /etc/grafana/pug-gateway.pem\n",
            "expect_claims = {\"aud\":\"pug:acme\",\"iss\":\"pug\"}\n",
            "role_attribute_path = role\n",
            "role_attribute_strict = true\n",
            "allow_assign_grafana_admin = false\n",
        ] {
            assert!(ini.contains(line), "{line:?} missing from {ini}");
        }
        assert_ne!(
            s.hash(),
            spec().hash(),
            "a change of trust rolls the instance"
        );
    }

    #[test]
    fn hash_follows_every_setting() {
        let a = spec();
        let mut b = spec();
        assert_eq!(a.hash(), b.hash());
        b.overrides.set("server.enable_gzip=true").unwrap();
        assert_ne!(a.hash(), b.hash());
        let mut c = spec();
        c.version = GrafanaVersion::parse("11.4.0").unwrap();
        assert_ne!(a.hash(), c.hash());
        let mut d = spec();
        d.secrets.secret_key = SecretString::from("other");
        assert_ne!(a.hash(), d.hash());
    }

    /// The settings pug enforces (everything after the overrides) cannot be overridden under
    /// any spelling: neither their ini path nor another path with the same `GF_` variable.
    #[test]
    fn no_override_reaches_an_enforced_setting() {
        let mut s = spec();
        s.rendering = Some(RenderingSettings {
            server_url: "http://r".into(),
            callback_url: "http://c".into(),
        });
        s.secrets.renderer_token = Some(SecretString::from("t"));
        s.database = DatabaseSettings::Postgres {
            host: "h:5432".into(),
            name: "n".into(),
            user: "u".into(),
            password: SecretString::from("p"),
            ssl_mode: "disable".into(),
        };
        let all = s.settings();
        let first_enforced = all
            .iter()
            .position(|x| (x.section.as_str(), x.key.as_str()) == ("server", "http_port"))
            .unwrap();
        for setting in &all[first_enforced..] {
            let (section, key) = (&setting.section, &setting.key);
            let mut spellings = vec![format!("{section}.{key}")];
            // Move each `_` of the key into the section and each `.` of the section into the
            // key: all the same variable for Grafana.
            let full = format!("{section}.{key}");
            for (i, c) in full.char_indices() {
                if c == '_' || c == '.' {
                    let mut other = full.clone();
                    other.replace_range(i..i + 1, if c == '_' { "." } else { "_" });
                    if other.contains('.') {
                        spellings.push(other);
                    }
                }
            }
            for path in spellings {
                let err = Overrides::default().insert(&path, "x");
                assert!(
                    err.is_err(),
                    "{path} (pug enforces {section}.{key}) was accepted"
                );
            }
        }
    }

    #[test]
    fn overrides_come_before_what_pug_enforces() {
        let mut s = spec();
        s.overrides.set("users.allow_sign_up=true").unwrap();
        let all = s.settings();
        let names: Vec<String> = all.iter().map(Setting::env_name).collect();
        let at = |n: &str| names.iter().rposition(|x| x == n).unwrap();
        assert!(at("GF_USERS_ALLOW_SIGN_UP") < at("GF_AUTH_PROXY_HEADER_NAME"));
        let ini = render_ini(&all, &[]);
        assert!(ini.contains("allow_sign_up = true\n"), "{ini}");
        assert!(ini.contains("admin_user = pug+admin\n"));
        assert!(ini.contains("csrf_always_check = true\n"));
        assert!(s.admin_email().ends_with("@pug.invalid"));
        let mut other = spec();
        other.secrets.secret_key = SecretString::from("other");
        assert_ne!(s.admin_email(), other.admin_email());
    }

    #[test]
    fn env_names_follow_grafana() {
        let s = Setting {
            section: "auth.proxy".into(),
            key: "header_name".into(),
            value: Value::Plain(String::new()),
        };
        assert_eq!(s.env_name(), "GF_AUTH_PROXY_HEADER_NAME");
    }
}
