//! Login throttling and the client address it counts under.
//!
//! Owns: the bounded in-memory tables of recent sign-in failures per user and per client
//! address, the delays they impose, and which `X-Forwarded-For` entry is the client's (only
//! trusted proxies are believed).
//!
//! Must not: do IO; everything here is a pure decision or a bounded in-memory table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use ipnet::IpNet;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
