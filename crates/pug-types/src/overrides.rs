//! `grafana.ini` overrides a tenant asks for (`pug tenant update acme --set server.enable_gzip=true`).
//!
//! Only Grafana's own settings are used to configure a tenant. pug itself owns the settings that
//! isolate tenants from each other (ports, paths, root URL, auth proxy, admin account, secrets,
//! database, renderer); an override of one of those is refused, because it would let one
//! tenant's configuration break the isolation pug promises.
//!
//! Owns: the reserved list and the checks of one override. A setting reaches Grafana under two
//! names: its ini path (`[auth.proxy] header_name`, process backend) and its environment
//! variable (`GF_AUTH_PROXY_HEADER_NAME`, docker and swarm, see [`grafana_env_name`]). Many ini
//! paths share one variable (`auth.proxy_header_name`, `auth_proxy.header_name`), so every
//! override is checked by its variable name: an override is refused when its variable is a
//! reserved setting's variable or starts with a reserved section's prefix. Also refused:
//! `__file` keys (the Grafana image's entrypoint reads a file into the setting), values that
//! Grafana would expand (`$__file{…}`, `$__env{…}`, `${VAR}`; see [`find_expansion`]) unless
//! the operator allows expansion, and secret-bearing settings (passwords, client secrets, API
//! keys), which overrides cannot keep secret (they are stored and shown in clear).
//!
//! Must not: do IO or know which backend runs the tenant.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// Settings pug sets itself, as `section.key` (or `section.*` for a whole section), with the
/// reason shown to whoever tries to override them. Compared by environment variable name, so
/// `section.*` also covers every section whose variable prefix starts the same way
/// (`database.*` covers `database_ssl.mode`, `rendering.*` covers `rendering_server.url`).
const RESERVED: &[(&str, &str)] = &[
    ("paths.*", "pug gives every replica its own directories"),
    ("server.http_addr", "pug allocates each replica's address"),
    ("server.http_port", "pug allocates each replica's port"),
    ("server.root_url", "it follows the gateway's public URL"),
    (
        "server.serve_from_sub_path",
        "it follows the gateway's routing mode",
    ),
    ("server.protocol", "the gateway terminates TLS"),
    (
        "server.static_root_path",
        "it would serve any file of the machine",
    ),
    (
        "auth.proxy.*",
        "the gateway authenticates people through it",
    ),
    (
        "auth.jwt.*",
        "the gateway may authenticate people through it",
    ),
    (
        "auth.login_cookie_name",
        "every tenant has a cookie name of its own",
    ),
    (
        "security.admin_user",
        "pug manages the tenant's admin account",
    ),
    (
        "security.admin_email",
        "pug manages the tenant's admin account",
    ),
    (
        "security.admin_password",
        "pug generates and keeps the tenant's admin password",
    ),
    (
        "security.disable_initial_admin_creation",
        "pug manages the tenant's admin account",
    ),
    (
        "security.secret_key",
        "pug generates a secret_key per tenant",
    ),
    (
        "security.csrf_always_check",
        "pug keeps Grafana's CSRF check on for every tenant",
    ),
    (
        "security.data_source_proxy_whitelist",
        "the operator sets it (grafana.data_source_proxy_whitelist)",
    ),
    (
        "aws.allowed_auth_providers",
        "a tenant's AWS datasources use its own keys, never the machine's credentials or role",
    ),
    (
        "azure.managed_identity_enabled",
        "a tenant's Azure datasources never use the machine's identity",
    ),
    (
        "azure.workload_identity_enabled",
        "a tenant's Azure datasources never use the machine's identity",
    ),
    (
        "panels.disable_sanitize_html",
        "unsanitised panel HTML runs script on the tenant's origin",
    ),
    (
        "plugins.preinstall_disabled",
        "the operator decides (grafana.plugin_preinstall)",
    ),
    ("database.*", "pug manages the tenant's database"),
    ("rendering.*", "pug wires every tenant to its renderer"),
    (
        "install.*",
        "Grafana's image installs plugins from GF_INSTALL_PLUGINS",
    ),
];

/// The environment variable Grafana reads `[section] key` from: `GF_<SECTION>_<KEY>`, upper
/// case, with `.` and `-` as `_` (Grafana's `EnvKey` in `pkg/setting`). The docker and swarm
/// backends name variables with it, and the reserved list is checked with it.
pub fn grafana_env_name(section: &str, key: &str) -> String {
    format!("GF_{section}_{key}")
        .to_ascii_uppercase()
        .replace(['.', '-'], "_")
}

/// Where a value goes, which decides what Grafana expands in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpansionContext {
    /// A `grafana.ini` value or `GF_*` variable: Grafana expands `${VAR}` and
    /// `$__<provider>{…}` (`$__file`, `$__env`, `$__vault`). pug also refuses `$VAR`, which
    /// Grafana leaves alone here, so one rule covers every place a value may end up.
    Ini,
    /// A provisioning file value (datasource fields, `jsonData`, `secureJsonData`): Grafana
    /// splits the value on `$$` (a literal `$`), then expands `$__<provider>{…}` and, like a
    /// shell, `$VAR` and `${VAR}` in each part (`pkg/services/provisioning/values`).
    Provisioning,
}

/// The first piece of `value` that Grafana would expand into something else (an environment
/// variable, a file's contents, a vault secret) in `context`, or `None` when Grafana uses the
/// value as it is.
pub fn find_expansion(value: &str, context: ExpansionContext) -> Option<String> {
    let parts: Vec<&str> = match context {
        ExpansionContext::Ini => vec![value],
        ExpansionContext::Provisioning => value.split("$$").collect(),
    };
    for part in parts {
        let bytes = part.as_bytes();
        for (i, _) in part.match_indices('$') {
            let Some(&next) = bytes.get(i + 1) else {
                continue;
            };
            // Go's os.Expand (provisioning): `${…}`, a name, or a special variable
            // (`$*#$@!?-` and digits). In ini values: `${…}`, `$__…{` and (pug's rule) `$NAME`.
            let expands = next == b'{'
                || next == b'_'
                || next.is_ascii_alphabetic()
                || (context == ExpansionContext::Provisioning
                    && (next.is_ascii_digit() || b"*#@!?-".contains(&next)));
            if expands {
                let end = part[i..]
                    .char_indices()
                    .nth(12)
                    .map(|(j, _)| i + j)
                    .unwrap_or(part.len());
                return Some(part[i..end].to_owned());
            }
        }
    }
    None
}

/// Whether a key holds a secret (a password, a client secret, an API key or token). Overrides
/// are kept and shown in clear, so they cannot carry one.
fn is_secret_key(key: &str) -> bool {
    key == "password"
        || key.ends_with("_password")
        || key.contains("secret")
        || key.ends_with("api_key")
        || key == "token"
        || key.ends_with("_token")
        || key.ends_with("access_key")
        || key.ends_with("private_key")
        || key == "connstr"
}

/// `grafana.ini` overrides: section → key → value, e.g. `server` → `enable_gzip` → `true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Overrides(BTreeMap<String, BTreeMap<String, String>>);

impl Overrides {
    /// Parses and adds one `section.key=value` assignment. The key is what follows the last
    /// dot, so `auth.generic_oauth.enabled=true` is key `enabled` in section `auth.generic_oauth`.
    /// Values Grafana would expand are refused (see [`Overrides::set_with`]).
    pub fn set(&mut self, assignment: &str) -> Result<(), InvalidInput> {
        self.set_with(assignment, false)
    }

    /// [`Overrides::set`], allowing values Grafana expands (`$__file{…}`, `${VAR}`) when
    /// `allow_expansion` (the operator's `controller.allow_setting_expansion`).
    pub fn set_with(
        &mut self,
        assignment: &str,
        allow_expansion: bool,
    ) -> Result<(), InvalidInput> {
        let (path, value) = assignment.split_once('=').ok_or_else(|| {
            InvalidInput::new(
                "overrides",
                format!("{assignment:?} is not an assignment; write section.key=value, e.g. server.enable_gzip=true"),
            )
        })?;
        self.insert_with(path.trim(), value.trim(), allow_expansion)
    }

    /// Adds `value` at `section.key` after checking both (expansion refused).
    pub fn insert(&mut self, path: &str, value: &str) -> Result<(), InvalidInput> {
        self.insert_with(path, value, false)
    }

    /// Adds `value` at `section.key` after checking both.
    pub fn insert_with(
        &mut self,
        path: &str,
        value: &str,
        allow_expansion: bool,
    ) -> Result<(), InvalidInput> {
        let (section, key) = path.rsplit_once('.').ok_or_else(|| {
            InvalidInput::new(
                "overrides",
                format!("{path:?} names no section; write section.key, e.g. server.enable_gzip"),
            )
        })?;
        validate(section, key, value, allow_expansion)?;
        let env = grafana_env_name(section, key);
        if let Some((s, k, _)) = self
            .iter()
            .find(|(s, k, _)| (*s, *k) != (section, key) && grafana_env_name(s, k) == env)
        {
            return Err(InvalidInput::new(
                "overrides",
                format!(
                    "{section}.{key} and {s}.{k} are the same setting for Grafana ({env}); \
                     keep only one of them"
                ),
            ));
        }
        self.0
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// Checks every entry (used on overrides that arrive as a JSON object).
    pub fn validate(&self, allow_expansion: bool) -> Result<(), InvalidInput> {
        for (section, key, value) in self.iter() {
            validate(section, key, value, allow_expansion)?;
        }
        Ok(())
    }

    /// Iterates over `(section, key, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.0.iter().flat_map(|(section, keys)| {
            keys.iter()
                .map(move |(k, v)| (section.as_str(), k.as_str(), v.as_str()))
        })
    }

    /// Iterates over the entries whose name is not reserved: what a backend may apply. Every
    /// entry passed [`Overrides::insert`] when it was stored, but the reserved list may have
    /// grown since (a tenant stored by an older pug).
    pub fn applicable(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.iter()
            .filter(|(section, key, _)| check_name(section, key).is_ok())
    }

    /// Whether there are no overrides.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Merges `other` into `self`, `other` winning.
    pub fn merge(&mut self, other: &Overrides) {
        for (section, key, value) in other.iter() {
            self.0
                .entry(section.to_owned())
                .or_default()
                .insert(key.to_owned(), value.to_owned());
        }
    }
}

/// Checks a setting's name: syntax, `__file`, the reserved list (by environment variable
/// name) and secret-bearing keys.
fn check_name(section: &str, key: &str) -> Result<(), InvalidInput> {
    let ident = |s: &str, dots: bool| {
        !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (dots && b == b'.')
            })
            && !s.starts_with('.')
            && !s.ends_with('.')
    };
    if !ident(section, true) || !ident(key, false) {
        return Err(InvalidInput::new(
            "overrides",
            format!(
                "{section}.{key} is not a grafana.ini setting name; sections and keys use \
                 lowercase letters, digits and '_' (e.g. server.enable_gzip)"
            ),
        ));
    }
    if key.ends_with("__file") {
        return Err(InvalidInput::new(
            "overrides",
            format!(
                "{section}.{key} would make Grafana read the setting from a file; \
                 overrides take values, not files"
            ),
        ));
    }
    let env = grafana_env_name(section, key);
    for (reserved, why) in RESERVED {
        let hit = match reserved.strip_suffix(".*") {
            // `grafana_env_name(prefix, "")` ends in `_`: `GF_AUTH_PROXY_`.
            Some(prefix) => env.starts_with(&grafana_env_name(prefix, "")),
            None => {
                let (s, k) = reserved
                    .rsplit_once('.')
                    .expect("reserved entries have a section");
                env == grafana_env_name(s, k)
            }
        };
        if hit {
            let same = if reserved.ends_with(".*") {
                format!("{env} is in {reserved}")
            } else {
                format!("{env} is {reserved}")
            };
            let name = if *reserved == format!("{section}.{key}")
                || reserved
                    .strip_suffix(".*")
                    .is_some_and(|p| section == p || section.starts_with(&format!("{p}.")))
            {
                format!("{section}.{key}")
            } else {
                format!("{section}.{key} ({same} for Grafana)")
            };
            return Err(InvalidInput::new(
                "overrides",
                format!("{name} is managed by pug ({why}) and cannot be overridden"),
            ));
        }
    }
    if is_secret_key(key) {
        return Err(InvalidInput::new(
            "overrides",
            format!(
                "{section}.{key} holds a secret, and secret settings are not supported as \
                 overrides yet (overrides are stored and shown in clear); leave it unset"
            ),
        ));
    }
    Ok(())
}

fn validate(
    section: &str,
    key: &str,
    value: &str,
    allow_expansion: bool,
) -> Result<(), InvalidInput> {
    check_name(section, key)?;
    if value.chars().any(|c| c.is_control()) {
        return Err(InvalidInput::new(
            "overrides",
            format!("the value of {section}.{key} contains a control character such as a newline; give a single-line value"),
        ));
    }
    if !allow_expansion {
        if let Some(found) = find_expansion(value, ExpansionContext::Ini) {
            return Err(InvalidInput::new(
                "overrides",
                format!(
                    "the value of {section}.{key} contains {found:?}, which Grafana would \
                     replace with an environment variable or a file's contents; give a value \
                     without '$' followed by a name or '{{' (the operator can allow this with \
                     controller.allow_setting_expansion)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_sections() {
        let mut o = Overrides::default();
        o.set("server.enable_gzip=true").unwrap();
        o.set("auth.generic_oauth.enabled = false").unwrap();
        let all: Vec<_> = o.iter().collect();
        assert_eq!(
            all,
            vec![
                ("auth.generic_oauth", "enabled", "false"),
                ("server", "enable_gzip", "true")
            ]
        );
    }

    #[test]
    fn env_names_follow_grafana() {
        for (section, key, env) in [
            ("auth.proxy", "header_name", "GF_AUTH_PROXY_HEADER_NAME"),
            ("auth", "proxy_header_name", "GF_AUTH_PROXY_HEADER_NAME"),
            ("auth_proxy", "header_name", "GF_AUTH_PROXY_HEADER_NAME"),
            ("server", "root_url", "GF_SERVER_ROOT_URL"),
            ("plugin.my-app", "x", "GF_PLUGIN_MY_APP_X"),
        ] {
            assert_eq!(grafana_env_name(section, key), env);
        }
    }

    /// Every spelling of a reserved setting is refused: the ini path itself, and every other
    /// path that becomes the same `GF_` variable (the security review's F2 table, and more).
    #[test]
    fn refuses_every_spelling_of_a_reserved_setting() {
        for bad in [
            // The ini paths.
            "server.http_port=80",
            "server.root_url=http://evil/",
            "security.secret_key=x",
            "security.admin_user=x",
            "auth.proxy.whitelist=0.0.0.0/0",
            "paths.data=/",
            "database.type=mysql",
            // The review's F2 table: other paths, same variable.
            "auth.proxy_whitelist=0.0.0.0/0",
            "auth.proxy_header_name=X-Pwn",
            "auth_proxy.whitelist=0.0.0.0/0",
            "auth_proxy.header_name=X-Pwn",
            "auth.proxy_enabled=false",
            "server.root.url=http://evil/",
            "security.admin.user=x",
            "security.admin.password=x",
            "security.admin.email=x@y",
            "security_admin.user=x",
            "rendering_server.url=https://evil/",
            "rendering.server.url=https://evil/",
            "database_ssl.mode=disable",
            "database.ssl.mode=disable",
            "paths_data.x=/",
            "server.http.port=1",
            "auth.login.cookie_name=grafana_session_other",
            // Reserved for holes 8 and 13.
            "server.static_root_path=/",
            "server.static.root_path=/",
            "panels.disable_sanitize_html=true",
            "panels_disable.sanitize_html=true",
            "security.csrf_always_check=false",
            "security.csrf.always_check=false",
            "security.data_source_proxy_whitelist=evil:80",
            "security.disable_initial_admin_creation=true",
            "auth.jwt.enabled=true",
            "auth_jwt.key_file=/etc/passwd",
            "plugins.preinstall_disabled=false",
            "install.plugins=https://evil/p.zip;p",
            // The machine's cloud credentials.
            "aws.allowed_auth_providers=default,ec2_iam_role,credentials",
            "aws_allowed.auth_providers=default",
            "azure.managed_identity_enabled=true",
            "azure.workload_identity_enabled=true",
            // `__FILE` reads a file into any setting (the image's entrypoint).
            "server.root_url__file=/etc/passwd",
            "smtp.from_address__file=/run/secrets/pug-security-secret-key",
        ] {
            let mut o = Overrides::default();
            let err = o.set(bad).unwrap_err();
            assert_eq!(err.field, "overrides", "{bad}");
            assert!(o.is_empty(), "{bad}: a refused override changes nothing");
        }
    }

    #[test]
    fn refuses_bad_names_and_values() {
        let mut o = Overrides::default();
        for bad in [
            "enable_gzip=true",
            "server.enable_gzip",
            "Server.x=1",
            "server.x=a\nb",
        ] {
            let err = o.set(bad).unwrap_err();
            assert_eq!(err.field, "overrides", "{bad}");
        }
        assert!(o.is_empty(), "a refused override changes nothing");
    }

    #[test]
    fn refuses_secret_bearing_settings() {
        for bad in [
            "smtp.password=x",
            "auth.generic_oauth.client_secret=x",
            "auth.github.client_secret=x",
            "external_image_storage.s3.secret_key=x",
            "external_image_storage.s3.access_key=x",
            "grafana_com.api_key=x",
            "remote_cache.connstr=redis://:pw@h",
            "auth.ldap.bind_password=x",
        ] {
            let err = Overrides::default().set(bad).unwrap_err();
            assert!(
                err.message.contains("not supported as overrides yet"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn refuses_expansion_unless_allowed() {
        for bad in [
            "server.domain=$__file{/var/lib/pug/master.key}",
            "server.domain=$__env{PUG_MASTER_KEY}",
            "server.domain=$__vault{kv:x}",
            "server.domain=x${HOME}",
            "server.domain=$HOME",
        ] {
            let err = Overrides::default().set(bad).unwrap_err();
            assert!(
                err.message.contains("allow_setting_expansion"),
                "{bad}: {err}"
            );
            Overrides::default().set_with(bad, true).unwrap();
        }
        for fine in [
            "server.domain=a$",
            "server.domain=costs $5",
            "server.domain=$ x",
        ] {
            Overrides::default().set(fine).unwrap();
        }
    }

    #[test]
    fn finds_what_grafana_expands() {
        use ExpansionContext::*;
        for (value, context, found) in [
            ("plain", Ini, None),
            ("${A}", Ini, Some("${A}")),
            ("x$__file{/etc/passwd}", Ini, Some("$__file{/etc")),
            ("$$HOME", Ini, Some("$HOME")),
            ("$$HOME", Provisioning, None),
            ("$$${HOME}", Provisioning, Some("${HOME}")),
            ("pa$$word", Provisioning, None),
            ("pa$word", Provisioning, Some("$word")),
            ("$1", Provisioning, Some("$1")),
            ("a$-b", Provisioning, Some("$-b")),
            ("a$ b", Provisioning, None),
            ("end$", Provisioning, None),
        ] {
            assert_eq!(
                find_expansion(value, context).as_deref(),
                found,
                "{value} in {context:?}"
            );
        }
    }

    #[test]
    fn one_setting_is_given_once() {
        let mut o = Overrides::default();
        o.set("server.enable_gzip=true").unwrap();
        let err = o.set("server_enable.gzip=false").unwrap_err();
        assert!(err.message.contains("GF_SERVER_ENABLE_GZIP"), "{err}");
        o.set("server.enable_gzip=false").unwrap();
    }

    #[test]
    fn keeps_overridable_settings() {
        let mut o = Overrides::default();
        for fine in [
            "server.enable_gzip=true",
            "users.allow_sign_up=true",
            "auth.anonymous.enabled=true",
            "auth.generic_oauth.client_id=abc",
            "smtp.user=me",
            "smtp.host=mail:25",
        ] {
            o.set(fine).unwrap();
        }
        assert_eq!(o.applicable().count(), 6);
    }
}
