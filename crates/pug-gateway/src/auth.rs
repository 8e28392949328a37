//! Who is asking: passwords (argon2id), signed cookies, CSRF tokens, login throttling and
//! the validation of names, emails and roles.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use pug_types::InvalidInput;
use sha2::Sha256;

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

/// Checks a new user's fields; the error names the field.
pub fn validate_new_user(name: &str, email: &str, password: &str) -> Result<(), InvalidInput> {
    if !valid_login(name) {
        return Err(InvalidInput::new(
            "name",
            format!("user name {name:?} is not valid; use 1 to 64 lowercase letters, digits and . _ @ -, starting with a letter or digit"),
        ));
    }
    if !valid_email(email) {
        return Err(InvalidInput::new(
            "email",
            format!("email {email:?} is not a valid address"),
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

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Signs and checks cookie values with HMAC-SHA256 under the store's gateway key.
#[derive(Clone)]
pub struct Signer {
    /// The MAC already keyed (its inner and outer key blocks hashed): every cookie of every
    /// request is checked, and cloning this state is cheaper than keying anew each time.
    keyed: Hmac<Sha256>,
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self {
            keyed: Hmac::<Sha256>::new_from_slice(key).expect("any key length"),
        }
    }

    fn mac(&self, purpose: &str, value: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        mac
    }

    /// `value.signature`, for `purpose` (a session id signed as a session cannot pass as a
    /// CSRF token and the other way round).
    pub fn sign(&self, purpose: &str, value: &str) -> String {
        let sig = self.mac(purpose, value).finalize().into_bytes();
        format!("{value}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The value of a signed string, if its signature is good.
    pub fn verify<'a>(&self, purpose: &str, signed: &'a str) -> Option<&'a str> {
        let (value, sig) = signed.rsplit_once('.')?;
        // A SHA-256 MAC is 32 bytes (43 characters): anything longer is refused unread.
        let mut buf = [0u8; 32];
        if sig.len() != 43 {
            return None;
        }
        let n = URL_SAFE_NO_PAD.decode_slice(sig, &mut buf).ok()?;
        self.mac(purpose, value).verify_slice(&buf[..n]).ok()?;
        Some(value)
    }
}

/// Counts failed logins per user and per client address in a fixed window and refuses
/// attempts over the limit until the window ends.
pub struct Throttle {
    window: Duration,
    per_user: u32,
    per_address: u32,
    users: Mutex<HashMap<String, (u32, Instant)>>,
    addresses: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Entries kept before the tables are swept of expired windows.
const THROTTLE_SWEEP_AT: usize = 10_000;

impl Throttle {
    pub fn new(window: Duration, per_user: u32, per_address: u32) -> Self {
        Self {
            window,
            per_user,
            per_address,
            users: Mutex::default(),
            addresses: Mutex::default(),
        }
    }

    /// `Some(wait)` if `user` or `address` must wait before trying again.
    pub fn blocked(&self, user: &str, address: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let check = |entry: Option<&(u32, Instant)>, limit: u32| {
            entry.and_then(|(n, start)| {
                let elapsed = now.duration_since(*start);
                (*n >= limit && elapsed < self.window).then(|| self.window - elapsed)
            })
        };
        let by_user = check(lock(&self.users).get(user), self.per_user);
        let by_addr = check(lock(&self.addresses).get(&address), self.per_address);
        by_user.max(by_addr)
    }

    /// Records a failed attempt.
    pub fn failed(&self, user: &str, address: IpAddr) {
        let now = Instant::now();
        let window = self.window;
        let bump = |entry: &mut (u32, Instant)| {
            if now.duration_since(entry.1) >= window {
                *entry = (0, now);
            }
            entry.0 += 1;
        };
        {
            let mut users = lock(&self.users);
            if users.len() > THROTTLE_SWEEP_AT {
                users.retain(|_, (_, s)| now.duration_since(*s) < window);
            }
            bump(users.entry(user.to_owned()).or_insert((0, now)));
        }
        let mut addresses = lock(&self.addresses);
        if addresses.len() > THROTTLE_SWEEP_AT {
            addresses.retain(|_, (_, s)| now.duration_since(*s) < window);
        }
        bump(addresses.entry(address).or_insert((0, now)));
    }

    /// Clears a user's failures after a successful login.
    pub fn succeeded(&self, user: &str) {
        lock(&self.users).remove(user);
    }
}

/// Locks a mutex, recovering from poisoning (the data are counters; a panic elsewhere does
/// not make them unusable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh random token (for CSRF), base64url.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong horse"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn signatures_are_bound_to_purpose_and_key() {
        let s = Signer::new(b"key");
        let v = s.sign("session", "abc");
        assert_eq!(s.verify("session", &v), Some("abc"));
        assert_eq!(s.verify("csrf", &v), None);
        assert_eq!(Signer::new(b"other").verify("session", &v), None);
        assert_eq!(s.verify("session", "abc.AAAA"), None);
        assert_eq!(s.verify("session", "abc"), None);
        // One character of the signature changed, or one added: refused.
        let (value, sig) = v.rsplit_once('.').unwrap();
        let first = if sig.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{value}.{first}{}", &sig[1..]);
        assert_eq!(s.verify("session", &tampered), None);
        assert_eq!(s.verify("session", &format!("{v}A")), None);
        assert_eq!(s.verify("session", &format!("abd.{sig}")), None);
    }

    #[test]
    fn throttle_blocks_after_the_limit() {
        let t = Throttle::new(Duration::from_secs(60), 3, 10);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(t.blocked("alice", ip).is_none());
            t.failed("alice", ip);
        }
        assert!(t.blocked("alice", ip).is_some());
        assert!(t.blocked("bob", ip).is_none());
        t.succeeded("alice");
        assert!(t.blocked("alice", ip).is_none());
    }

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
        assert_eq!(GrafanaRole::parse("editor"), Some(GrafanaRole::Editor));
        assert_eq!(GrafanaRole::parse("GrafanaAdmin"), None);
    }
}
