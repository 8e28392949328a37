//! The checked fields of a tenant's spec: [`Replicas`] (1 to [`MAX_REPLICAS`]), [`Labels`]
//! (sizes, and the `pug.` prefix kept for pug's own), and the display name's length
//! ([`check_display_name`]).
//!
//! Owns: those rules and their messages (the API answers them as they are, with the field).
//! A `Replicas` or `Labels` holds a valid value however it was made: from user input, from
//! JSON (`serde(try_from)`: a stored spec is checked as it is read), or in code.
//!
//! Must not: know the configuration (that more than one replica needs a shared database is
//! the API's rule, since it depends on `grafana_database.url`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// The most replicas one tenant may ask for.
pub const MAX_REPLICAS: u32 = 16;

/// The longest display name, in bytes.
pub const MAX_DISPLAY_NAME: usize = 200;

/// How many replicas (instances) serve a tenant: 1 to [`MAX_REPLICAS`] (a stopped tenant is
/// suspended, not scaled to 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Replicas(u32);

impl Replicas {
    pub const ONE: Replicas = Replicas(1);

    /// `n` replicas, if `n` is 1 to [`MAX_REPLICAS`].
    pub fn new(n: u32) -> Result<Self, InvalidInput> {
        if n == 0 || n > MAX_REPLICAS {
            return Err(InvalidInput::new(
                "replicas",
                format!(
                    "replicas must be between 1 and {MAX_REPLICAS}; use suspend to stop a tenant"
                ),
            ));
        }
        Ok(Self(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Replicas {
    type Error = InvalidInput;
    fn try_from(n: u32) -> Result<Self, InvalidInput> {
        Self::new(n)
    }
}

impl From<Replicas> for u32 {
    fn from(r: Replicas) -> u32 {
        r.0
    }
}

impl PartialEq<u32> for Replicas {
    fn eq(&self, other: &u32) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Free-form labels for the operator's bookkeeping: keys 1–63 bytes, values at most 253. Keys
/// starting with `pug.` are pug's own ([`Labels::PUG`]): refused from users
/// ([`Labels::from_user`]), set by pug itself ([`Labels::set_pug`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// pug's label asking that the tenant's databases be dropped at its deletion
    /// (`DELETE …?purge=true`).
    pub const PURGE: &'static str = "pug.purge";
    /// The labels pug sets itself.
    pub const PUG: &'static [&'static str] = &[Self::PURGE];

    /// Labels given by a user: every key must be valid and none may be pug's.
    pub fn from_user(labels: BTreeMap<String, String>) -> Result<Self, InvalidInput> {
        for (k, v) in &labels {
            if k.is_empty() || k.len() > 63 || v.len() > 253 || k.starts_with("pug.") {
                return Err(invalid_label(k));
            }
        }
        Ok(Self(labels))
    }

    /// Sets one of pug's own labels. Panics on a key not in [`Labels::PUG`] (a bug in pug).
    pub fn set_pug(&mut self, key: &str, value: &str) {
        assert!(Self::PUG.contains(&key), "{key} is not one of pug's labels");
        self.0.insert(key.to_owned(), value.to_owned());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

fn invalid_label(k: &str) -> InvalidInput {
    InvalidInput::new(
        "labels",
        format!("label {k:?} is invalid: keys are 1-63 characters and may not start with \"pug.\", values at most 253"),
    )
}

/// Labels as stored: a user's, plus those of pug's own.
impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = InvalidInput;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, InvalidInput> {
        let (pugs, users): (BTreeMap<_, _>, BTreeMap<_, _>) = map
            .into_iter()
            .partition(|(k, _)| Self::PUG.contains(&k.as_str()));
        let mut labels = Self::from_user(users)?;
        for (k, v) in pugs {
            if v.len() > 253 {
                return Err(invalid_label(&k));
            }
            labels.0.insert(k, v);
        }
        Ok(labels)
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(l: Labels) -> Self {
        l.0
    }
}

/// `serde(deserialize_with)` of `TenantSpec::display_name`: a stored spec is checked as read.
pub(crate) fn display_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    check_display_name(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

/// Checks a tenant's display name: at most [`MAX_DISPLAY_NAME`] bytes.
pub fn check_display_name(name: &str) -> Result<(), InvalidInput> {
    if name.len() > MAX_DISPLAY_NAME {
        return Err(InvalidInput::new(
            "display_name",
            format!("display_name is longer than {MAX_DISPLAY_NAME} characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replicas_are_one_to_the_maximum() {
        for (n, ok) in [
            (0, false),
            (1, true),
            (2, true),
            (MAX_REPLICAS, true),
            (MAX_REPLICAS + 1, false),
            (u32::MAX, false),
        ] {
            assert_eq!(Replicas::new(n).is_ok(), ok, "{n}");
            let json: Result<Replicas, _> = serde_json::from_value(serde_json::json!(n));
            assert_eq!(json.is_ok(), ok, "{n} from JSON");
        }
        let e = Replicas::new(0).unwrap_err();
        assert_eq!(e.field, "replicas");
        assert_eq!(
            e.message,
            "replicas must be between 1 and 16; use suspend to stop a tenant"
        );
        assert_eq!(serde_json::to_value(Replicas::new(3).unwrap()).unwrap(), 3);
    }

    #[test]
    fn user_labels_are_checked() {
        let long_key = "k".repeat(64);
        let long_value = "v".repeat(254);
        for (labels, ok) in [
            (map(&[]), true),
            (map(&[("team", "a")]), true),
            (map(&[(&"k".repeat(63), &"v".repeat(253))]), true),
            (map(&[("", "a")]), false),
            (map(&[(&long_key, "a")]), false),
            (map(&[("team", &long_value)]), false),
            (map(&[("pug.purge", "true")]), false),
            (map(&[("pug.anything", "x")]), false),
            (map(&[("team", "a"), ("pug.x", "b")]), false),
        ] {
            assert_eq!(Labels::from_user(labels.clone()).is_ok(), ok, "{labels:?}");
        }
        let e = Labels::from_user(map(&[("pug.x", "1")])).unwrap_err();
        assert_eq!(e.field, "labels");
        assert_eq!(
            e.message,
            "label \"pug.x\" is invalid: keys are 1-63 characters and may not start with \"pug.\", values at most 253"
        );
    }

    #[test]
    fn stored_labels_may_hold_pugs_own_only() {
        for (labels, ok) in [
            (map(&[("team", "a"), ("pug.purge", "true")]), true),
            (map(&[("pug.other", "true")]), false),
            (map(&[("", "x")]), false),
        ] {
            let json: Result<Labels, _> = serde_json::from_value(serde_json::json!(labels));
            assert_eq!(json.is_ok(), ok, "{labels:?}");
        }
        let mut l = Labels::default();
        l.set_pug("pug.purge", "true");
        assert_eq!(l.get("pug.purge"), Some("true"));
        let back: Labels = serde_json::from_value(serde_json::to_value(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn display_names_have_a_length_limit() {
        for (name, ok) in [
            (String::new(), true),
            ("Acme".to_owned(), true),
            ("x".repeat(MAX_DISPLAY_NAME), true),
            ("x".repeat(MAX_DISPLAY_NAME + 1), false),
        ] {
            assert_eq!(check_display_name(&name).is_ok(), ok, "{}", name.len());
        }
        assert_eq!(
            check_display_name(&"x".repeat(201)).unwrap_err().message,
            "display_name is longer than 200 characters"
        );
    }
}
