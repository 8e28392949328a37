//! Tenant identifiers: DNS labels, so that an id is safe in a host name, a path segment, a file
//! name, a container name and a PostgreSQL identifier alike.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// A tenant id: a DNS label, `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Validates `s` as a tenant id.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let bad = |why: &str| {
            Err(InvalidInput::new(
                "id",
                format!(
                    "tenant id {s:?} {why}; use 1 to 63 lowercase letters, digits and '-', \
                     starting and ending with a letter or digit (a DNS label), e.g. \"acme\""
                ),
            ))
        };
        if s.is_empty() {
            return bad("is empty");
        }
        if s.len() > 63 {
            return bad("is longer than 63 characters");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("contains a character other than a-z, 0-9 and '-'");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return bad("starts or ends with '-'");
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> String {
        id.0
    }
}

impl std::str::FromStr for TenantId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "acme", "acme-2", "0", "a1-b2-c3", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "-a",
            "a-",
            "Acme",
            "a_b",
            "a.b",
            "a/b",
            "..",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            let err = TenantId::parse(bad).unwrap_err();
            assert_eq!(err.field, "id");
            assert!(err.message.contains("DNS label"), "{}", err.message);
        }
    }
}
