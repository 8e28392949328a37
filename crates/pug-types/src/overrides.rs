//! `grafana.ini` overrides a tenant asks for (`pug tenant update acme --set server.enable_gzip=true`).
//!
//! Only Grafana's own settings are used to configure a tenant. pug itself owns the settings that
//! isolate tenants from each other (ports, paths, root URL, auth proxy, secrets, database); an
//! override of one of those is refused, because it would let one tenant's configuration break
//! the isolation pug promises.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// Settings pug sets itself, as `section.key` (or `section.*` for a whole section), with the
/// reason shown to whoever tries to override them.
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
        "auth.proxy.*",
        "the gateway authenticates people through it",
    ),
    (
        "security.admin_user",
        "pug manages the tenant's admin account",
    ),
    (
        "security.admin_password",
        "pug generates and keeps the tenant's admin password",
    ),
    (
        "security.secret_key",
        "pug generates a secret_key per tenant",
    ),
    ("database.*", "pug manages the tenant's database"),
    ("rendering.*", "pug wires every tenant to its renderer"),
];

/// `grafana.ini` overrides: section → key → value, e.g. `server` → `enable_gzip` → `true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Overrides(BTreeMap<String, BTreeMap<String, String>>);

impl Overrides {
    /// Parses and adds one `section.key=value` assignment. The key is what follows the last
    /// dot, so `auth.generic_oauth.enabled=true` is key `enabled` in section `auth.generic_oauth`.
    pub fn set(&mut self, assignment: &str) -> Result<(), InvalidInput> {
        let (path, value) = assignment.split_once('=').ok_or_else(|| {
            InvalidInput::new(
                "overrides",
                format!("{assignment:?} is not an assignment; write section.key=value, e.g. server.enable_gzip=true"),
            )
        })?;
        self.insert(path.trim(), value.trim())
    }

    /// Adds `value` at `section.key` after checking both.
    pub fn insert(&mut self, path: &str, value: &str) -> Result<(), InvalidInput> {
        let (section, key) = path.rsplit_once('.').ok_or_else(|| {
            InvalidInput::new(
                "overrides",
                format!("{path:?} names no section; write section.key, e.g. server.enable_gzip"),
            )
        })?;
        validate(section, key, value)?;
        self.0
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// Checks every entry (used on overrides that arrive as a JSON object).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        for (section, keys) in &self.0 {
            for (key, value) in keys {
                validate(section, key, value)?;
            }
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

fn validate(section: &str, key: &str, value: &str) -> Result<(), InvalidInput> {
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
    if value.chars().any(|c| c.is_control()) {
        return Err(InvalidInput::new(
            "overrides",
            format!("the value of {section}.{key} contains a control character such as a newline; give a single-line value"),
        ));
    }
    for (reserved, why) in RESERVED {
        let hit = match reserved.strip_suffix(".*") {
            Some(prefix) => section == prefix || section.starts_with(&format!("{prefix}.")),
            None => *reserved == format!("{section}.{key}"),
        };
        if hit {
            return Err(InvalidInput::new(
                "overrides",
                format!("{section}.{key} is managed by pug ({why}) and cannot be overridden"),
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
    fn refuses_bad_and_reserved() {
        let mut o = Overrides::default();
        for bad in [
            "enable_gzip=true",
            "server.enable_gzip",
            "Server.x=1",
            "server.x=a\nb",
            "server.http_port=80",
            "security.secret_key=x",
            "auth.proxy.whitelist=0.0.0.0/0",
            "paths.data=/",
            "database.type=mysql",
        ] {
            let err = o.set(bad).unwrap_err();
            assert_eq!(err.field, "overrides", "{bad}");
        }
        assert!(o.is_empty(), "a refused override changes nothing");
    }
}
