//! Grafana versions as tenants ask for them (`11.3.0`, `12.0.0-beta1`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// The oldest Grafana pug runs: 10.0 introduced the `grafana server` command line pug uses.
const MINIMUM_MAJOR: u64 = 10;

/// A Grafana release version: semver, major ≥ 10.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GrafanaVersion(semver::Version);

impl GrafanaVersion {
    /// Validates `s` as a Grafana version (a leading `v` is accepted and dropped).
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let trimmed = s.strip_prefix('v').unwrap_or(s);
        let v = semver::Version::parse(trimmed).map_err(|_| {
            InvalidInput::new(
                "version",
                format!(
                    "{s:?} is not a Grafana release version; give one like \"11.3.0\" \
                     (see https://grafana.com/grafana/download for the list)"
                ),
            )
        })?;
        if v.major < MINIMUM_MAJOR {
            return Err(InvalidInput::new(
                "version",
                format!(
                    "Grafana {v} is older than pug supports; use Grafana {MINIMUM_MAJOR}.0.0 or newer"
                ),
            ));
        }
        Ok(Self(v))
    }

    /// The underlying semver value, for ordering (upgrades never go backwards).
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }
}

impl PartialOrd for GrafanaVersion {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GrafanaVersion {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl fmt::Display for GrafanaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<String> for GrafanaVersion {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<GrafanaVersion> for String {
    fn from(v: GrafanaVersion) -> String {
        v.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let a = GrafanaVersion::parse("11.3.0").unwrap();
        let b = GrafanaVersion::parse("v11.4.0").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "11.4.0");
        assert!(GrafanaVersion::parse("12.0.0-beta1").is_ok());
    }

    #[test]
    fn refuses_bad_and_old_versions() {
        for bad in ["", "latest", "11.3", "9.5.2", "11.3.0;rm"] {
            assert_eq!(GrafanaVersion::parse(bad).unwrap_err().field, "version");
        }
    }
}
