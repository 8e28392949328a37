//! Who a person may be: logins, emails and Grafana roles, and the identities reserved for
//! Grafana's own built-in administrator.
//!
//! Owns: what a valid login, email and role are, which ones no pug user may carry, and what a
//! sign-in form's user field must look like before anything looks it up.
//!
//! Must not: do IO.

use pug_types::InvalidInput;

/// A Grafana organisation role, as sent in `X-WEBAUTH-ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrafanaRole {
    Viewer,
    Editor,
    Admin,
}

impl GrafanaRole {
    /// Parses `Viewer`, `Editor` or `Admin` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Some(Self::Viewer),
            "editor" => Some(Self::Editor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "Viewer",
            Self::Editor => "Editor",
            Self::Admin => "Admin",
        }
    }
}

/// A login: 1–64 characters of `a-z 0-9 . _ @ -`, starting with a letter or digit. Safe in
/// a header, a URL and Grafana's user table alike.
pub fn valid_login(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._@-".contains(&b))
}

/// An email address as far as a header needs: printable ASCII, one `@`, at most 254 long.
pub fn valid_email(s: &str) -> bool {
    s.len() <= 254
        && s.bytes().filter(|b| *b == b'@').count() == 1
        && !s.starts_with('@')
        && !s.ends_with('@')
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether a login is Grafana's built-in server administrator's (`admin`, any case): Grafana's
/// auth proxy maps `X-WEBAUTH-USER: admin` onto that account, with server-admin rights no
/// org role removes, so no pug user may carry it.
pub fn reserved_login(s: &str) -> bool {
    s.trim().eq_ignore_ascii_case("admin")
}

/// Whether an email is Grafana's default admin email (`admin@localhost`, any case), which
/// newer Grafana versions match users by.
pub fn reserved_email(s: &str) -> bool {
    s.trim().eq_ignore_ascii_case("admin@localhost")
}

/// Whether a submitted sign-in `user` field is worth looking up: a valid login or email
/// (at most 64 bytes). Anything else is refused before any lookup, throttle entry or log line.
pub fn plausible_sign_in(s: &str) -> bool {
    s.len() <= 64 && (valid_login(s) || valid_email(s))
}

/// Checks a new user's fields; the error names the field.
pub fn validate_new_user(name: &str, email: &str, password: &str) -> Result<(), InvalidInput> {
    if !valid_login(name) {
        return Err(InvalidInput::new(
            "name",
            format!("user name {name:?} is not valid; use 1 to 64 lowercase letters, digits and . _ @ -, starting with a letter or digit"),
        ));
    }
    if reserved_login(name) {
        return Err(InvalidInput::new(
            "name",
            format!("user name {name:?} is reserved (it is Grafana's built-in administrator); choose another name"),
        ));
    }
    if !valid_email(email) {
        return Err(InvalidInput::new(
            "email",
            format!("email {email:?} is not a valid address"),
        ));
    }
    if reserved_email(email) {
        return Err(InvalidInput::new(
            "email",
            format!("email {email:?} is reserved (it is Grafana's built-in administrator's); give the person's own address"),
        ));
    }
    if password.chars().count() < 8 || password.len() > 1024 {
        return Err(InvalidInput::new(
            "password",
            "the password must be at least 8 characters (and at most 1024 bytes)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_roles() {
        assert!(valid_login("alice"));
        assert!(valid_login("a.b-c_d@x"));
        assert!(!valid_login("Alice"));
        assert!(!valid_login("-x"));
        assert!(!valid_login("a b"));
        assert!(!valid_login("a\r\nX-WEBAUTH-USER: admin"));
        assert!(valid_email("a@b.c"));
        assert!(!valid_email("a b@c"));
        for reserved in ["admin", "Admin", "ADMIN", " admin "] {
            assert!(reserved_login(reserved), "{reserved}");
            assert!(validate_new_user(reserved.trim(), "a@b.c", "long enough").is_err());
        }
        assert!(!reserved_login("admin2"));
        for reserved in ["admin@localhost", "ADMIN@LocalHost"] {
            assert!(reserved_email(reserved), "{reserved}");
            let e = validate_new_user("bob", reserved, "long enough").unwrap_err();
            assert!(e.to_string().contains("reserved"), "{e}");
        }
        assert!(validate_new_user("bob", "bob@localhost", "long enough").is_ok());
        assert!(plausible_sign_in("alice"));
        assert!(plausible_sign_in("Alice@Example.com"));
        assert!(!plausible_sign_in(&"a".repeat(65)));
        assert!(!plausible_sign_in("a\nb"));
        assert!(!plausible_sign_in(""));
        assert_eq!(GrafanaRole::parse("editor"), Some(GrafanaRole::Editor));
        assert_eq!(GrafanaRole::parse("GrafanaAdmin"), None);
    }
}
