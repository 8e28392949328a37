//! Who is asking: passwords (argon2id), signed cookies, CSRF tokens, login throttling, the
//! client address of a request behind trusted proxies, and the validation of names, emails
//! and roles (including the identities reserved for Grafana's own built-in admin).
//!
//! Must not: do IO; everything here is a pure decision or a bounded in-memory table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
pub use ipnet::IpNet;
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

/// The key a client's failures are counted under: its IPv4 address, or the /64 of its IPv6
/// address (one subscriber usually holds a whole /64, so counting single IPv6 addresses
/// would give an attacker 2^64 fresh buckets). IPv4-mapped IPv6 counts as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// The client's address: the TCP peer, unless the peer is one of `trusted` proxies; then the
/// right-most address of `X-Forwarded-For` (all its headers, in order) that is not itself a
/// trusted proxy. Entries left of that are the client's own claims and are ignored, so a
/// client cannot choose its throttle bucket. An entry that does not parse stops the walk at
/// the proxy that appended it.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let entries = forwarded_for.flat_map(|h| h.split(',')).collect::<Vec<_>>();
    for entry in entries.into_iter().rev() {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// Whether a sign-in may go ahead, and if so what it reserved.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Check the password. The attempt is already counted as a failure (so that parallel
    /// attempts see it before any hash is computed); [`Throttle::succeeded`] takes it back.
    /// `address_over`: the client address is over its failure limit, so a wrong password is
    /// answered 429 (a correct one still signs in).
    Go { address_over: bool },
    /// The user has failed too often lately: try again after this long. No password is checked.
    Wait(Duration),
}

/// Login throttling with growing delays instead of lockouts.
///
/// Per user: after `per_user` failures within `window`, each further attempt must wait
/// 1 s, 2 s, 4 s … (at most `max_delay`) after the previous one; attempts inside the delay
/// are refused without checking a password. The owner can always sign in once the delay is
/// over, so an attacker cannot lock a person out for longer than `max_delay`.
///
/// Per client address (see [`client_key`]): failures are counted, and over `per_address` a
/// wrong password is answered 429; the address bucket never refuses a correct password (behind
/// a proxy that is not listed as trusted, every client has one address).
pub struct Throttle {
    window: Duration,
    per_user: u32,
    per_address: u32,
    max_delay: Duration,
    users: Mutex<HashMap<String, UserFailures>>,
    addresses: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

#[derive(Debug, Clone, Copy)]
struct UserFailures {
    count: u32,
    since: Instant,
    not_before: Instant,
}

/// Entries kept before the tables are swept of expired windows.
const THROTTLE_SWEEP_AT: usize = 10_000;
/// Entries kept at most: past this, entries that impose no delay are dropped (a flood of
/// made-up names cannot grow the table without bound).
const THROTTLE_MAX: usize = 100_000;

impl Throttle {
    pub fn new(window: Duration, per_user: u32, per_address: u32) -> Self {
        Self {
            window,
            per_user,
            per_address,
            max_delay: Duration::from_secs(60).min(window),
            users: Mutex::default(),
            addresses: Mutex::default(),
        }
    }

    /// The delay before the next attempt of a user with `count` failures.
    fn delay(&self, count: u32) -> Duration {
        if count < self.per_user {
            return Duration::ZERO;
        }
        let doublings = (count - self.per_user).min(16);
        Duration::from_secs(1u64 << doublings).min(self.max_delay)
    }

    /// Decides whether `user` (already validated) from `client` (a [`client_key`]) may try a
    /// password at `now`, and if so counts the attempt as a failure in advance.
    pub fn begin(&self, user: &str, client: IpAddr, now: Instant) -> Admission {
        let window = self.window;
        {
            let mut users = lock(&self.users);
            if users.len() > THROTTLE_SWEEP_AT {
                users.retain(|_, f| now.duration_since(f.since) < window || f.not_before > now);
            }
            if users.len() > THROTTLE_MAX {
                users.retain(|_, f| f.not_before > now);
            }
            let f = users.entry(user.to_owned()).or_insert(UserFailures {
                count: 0,
                since: now,
                not_before: now,
            });
            if now < f.not_before {
                return Admission::Wait(f.not_before - now);
            }
            if now.duration_since(f.since) >= window {
                *f = UserFailures {
                    count: 0,
                    since: now,
                    not_before: now,
                };
            }
            f.count += 1;
            f.not_before = now + self.delay(f.count);
        }
        let mut addresses = lock(&self.addresses);
        if addresses.len() > THROTTLE_SWEEP_AT {
            addresses.retain(|_, (_, s)| now.duration_since(*s) < window);
        }
        if addresses.len() > THROTTLE_MAX {
            addresses.clear();
        }
        let entry = addresses.entry(client).or_insert((0, now));
        if now.duration_since(entry.1) >= window {
            *entry = (0, now);
        }
        let address_over = entry.0 >= self.per_address;
        entry.0 += 1;
        Admission::Go { address_over }
    }

    /// Takes back the failure [`Throttle::begin`] counted, after a correct password: the
    /// user's failures are cleared and the address's count goes down by one.
    pub fn succeeded(&self, user: &str, client: IpAddr) {
        lock(&self.users).remove(user);
        if let Some(entry) = lock(&self.addresses).get_mut(&client) {
            entry.0 = entry.0.saturating_sub(1);
        }
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
    fn throttle_delays_a_user_instead_of_locking_them_out() {
        let t = Throttle::new(Duration::from_secs(900), 3, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (attempt at, expected admission); every attempt that goes ahead fails.
        let table = [
            (
                s(0),
                Admission::Go {
                    address_over: false,
                },
            ),
            (
                s(0),
                Admission::Go {
                    address_over: false,
                },
            ),
            (
                s(0),
                Admission::Go {
                    address_over: false,
                },
            ),
            // 3 failures: the next attempt waits 1 s, then 2 s, then 4 s.
            (s(0), Admission::Wait(s(1))),
            (
                s(1),
                Admission::Go {
                    address_over: false,
                },
            ),
            (s(2), Admission::Wait(s(1))),
            (
                s(3),
                Admission::Go {
                    address_over: false,
                },
            ),
            (s(4), Admission::Wait(s(3))),
        ];
        for (i, (at, want)) in table.into_iter().enumerate() {
            assert_eq!(t.begin("alice", ip, t0 + at), want, "attempt {i}");
        }
        // Another user is not delayed; a correct password clears alice's failures.
        assert_eq!(
            t.begin("bob", ip, t0 + s(4)),
            Admission::Go {
                address_over: false
            }
        );
        assert_eq!(
            t.begin("alice", ip, t0 + s(7)),
            Admission::Go {
                address_over: false
            }
        );
        t.succeeded("alice", ip);
        assert_eq!(
            t.begin("alice", ip, t0 + s(7)),
            Admission::Go {
                address_over: false
            }
        );
    }

    #[test]
    fn the_delay_is_capped_and_the_window_forgets() {
        let t = Throttle::new(Duration::from_secs(900), 1, 1_000_000);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let mut at = t0;
        for _ in 0..40 {
            match t.begin("alice", ip, at) {
                Admission::Go { .. } => {}
                Admission::Wait(d) => {
                    assert!(d <= Duration::from_secs(60), "{d:?}");
                    at += d;
                }
            }
        }
        assert_eq!(
            t.begin("alice", ip, at + Duration::from_secs(901)),
            Admission::Go {
                address_over: false
            }
        );
    }

    #[test]
    fn the_address_bucket_marks_but_does_not_refuse() {
        let t = Throttle::new(Duration::from_secs(900), 5, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let users = ["a", "b", "c", "d"];
        let got: Vec<_> = users.iter().map(|u| t.begin(u, ip, now)).collect();
        assert_eq!(
            got,
            [false, false, true, true].map(|address_over| Admission::Go { address_over })
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            t.begin("e", other, now),
            Admission::Go {
                address_over: false
            }
        );
    }

    #[test]
    fn client_keys_group_ipv6_by_64() {
        let table = [
            ("192.0.2.7", "192.0.2.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff::1", "2001:db8:1:2::"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
        ];
        for (ip, key) in table {
            assert_eq!(
                client_key(ip.parse().unwrap()),
                key.parse::<IpAddr>().unwrap(),
                "{ip}"
            );
        }
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // (peer, X-Forwarded-For headers, client)
        let table: &[(&str, &[&str], &str)] = &[
            ("192.0.2.1", &["198.51.100.1"], "192.0.2.1"),
            ("10.0.0.1", &[], "10.0.0.1"),
            ("10.0.0.1", &["198.51.100.1"], "198.51.100.1"),
            ("10.0.0.1", &["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
            (
                "10.0.0.1",
                &["6.6.6.6", "198.51.100.1, 10.0.0.2"],
                "198.51.100.1",
            ),
            ("10.0.0.1", &["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            ("10.0.0.1", &["198.51.100.1, junk"], "10.0.0.1"),
            ("10.0.0.1", &[" 2001:db8::1 "], "2001:db8::1"),
        ];
        for (peer, xff, want) in table {
            assert_eq!(
                client_ip(ip(peer), xff.iter().copied(), &trusted),
                ip(want),
                "{peer} {xff:?}"
            );
        }
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
