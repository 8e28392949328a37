//! The Grafana settings of one instance: only Grafana's own settings, nothing patched.
//!
//! Owns: [`InstanceSpec`] and its translation into `grafana.ini` settings (see
//! `research/multitenant.md` §2): `root_url` and `serve_from_sub_path`, `auth.proxy` with the
//! gateway as the only whitelisted sender, a per-tenant `admin_password` and `secret_key`,
//! sign-up off, update checks off, plugin preinstall off unless allowed, the database, the
//! renderer, then the tenant's own overrides.
//!
//! Must not: decide where files go or how a value reaches Grafana (ini file, environment,
//! Docker secret). Backends do that with [`Setting::value`].

use std::collections::BTreeMap;

use pug_types::{ExposeSecret, GrafanaVersion, Overrides, SecretString, TenantId};
use sha2::{Digest, Sha256};

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
    /// Addresses allowed to send auth-proxy headers: the gateway's.
    pub proxy_whitelist: Vec<String>,
    /// The port this replica listens on (allocated by the controller; unique on the machine).
    pub port: u16,
    pub secrets: InstanceSecrets,
    pub database: DatabaseSettings,
    /// `rendering.server_url` and `callback_url`, when a renderer is wired.
    pub rendering: Option<RenderingSettings>,
    /// Whether Grafana's plugin preinstaller may reach grafana.com on start.
    pub plugin_preinstall: bool,
    pub overrides: Overrides,
    /// Datasources and dashboards provisioned into this Grafana.
    pub provisioning: crate::Provisioning,
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
        format!("GF_{}_{}", self.section, self.key)
            .to_ascii_uppercase()
            .replace(['.', '-'], "_")
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

    /// Every setting, in the order Grafana would apply them (the tenant's overrides last; the
    /// settings pug owns cannot be overridden: see `pug_types::Overrides`).
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        let mut plain = |section: &str, key: &str, value: &str| {
            out.push(Setting {
                section: section.into(),
                key: key.into(),
                value: Value::Plain(value.into()),
            })
        };
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
        plain("auth.proxy", "enabled", "true");
        plain("auth.proxy", "header_name", "X-WEBAUTH-USER");
        plain("auth.proxy", "header_property", "username");
        plain("auth.proxy", "auto_sign_up", "true");
        plain(
            "auth.proxy",
            "headers",
            "Email:X-WEBAUTH-EMAIL Role:X-WEBAUTH-ROLE Name:X-WEBAUTH-NAME",
        );
        plain("auth.proxy", "whitelist", &self.proxy_whitelist.join(", "));
        plain("auth", "disable_signout_menu", "true");
        // A per-tenant cookie name, so tenants that share a host (path mode) never read each
        // other's Grafana session cookie.
        plain(
            "auth",
            "login_cookie_name",
            &format!("grafana_session_{}", self.tenant.as_str().replace('-', "_")),
        );
        plain("security", "admin_user", "admin");
        plain("users", "allow_sign_up", "false");
        plain("users", "allow_org_create", "false");
        plain("analytics", "reporting_enabled", "false");
        plain("analytics", "check_for_updates", "false");
        plain("analytics", "check_for_plugin_updates", "false");
        plain("snapshots", "external_enabled", "false");
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
        for (section, key, value) in self.overrides.iter() {
            plain(section, key, value);
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
            proxy_whitelist: vec!["127.0.0.1".into()],
            port: 20001,
            secrets: InstanceSecrets {
                admin_password: SecretString::from("pw#1"),
                secret_key: SecretString::from("sk"),
                renderer_token: None,
            },
            database: DatabaseSettings::Sqlite,
            rendering: None,
            plugin_preinstall: false,
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
