//! What pug's integration tests share, so that no crate's `tests/support` copies it.
//!
//! Owns: polling a condition until a deadline ([`wait_for`], [`wait_for_blocking`]: one
//! polling policy, [`Poll`]); ports without a reuse race (the server picks port 0 and reports
//! the address: [`net::listening_addrs`], [`standin::listen_addr`]; a port reserved but not
//! listening: [`net::ClosedPort`]); finding the `grafana-standin` binary ([`standin::bin`]);
//! cookies and pug's login form ([`http`]); the tests' PostgreSQL server and a fresh database on
//! it ([`postgres`]).
//!
//! Must not: know pug's crates (no `pug-*` dependency but the leaf `pug-http`, whose client
//! TLS the tests' clients share: every crate's tests may use it, the store's and the types'
//! too), or hold a crate's own harness (the renderer's `Harness`, the
//! docker images, the `pug` binary's `Pug` stay in that crate's `tests/support`). Never a
//! fixed sleep: every wait polls a condition with a deadline and panics naming what it waited
//! for.

#![forbid(unsafe_code)]

pub mod http;
pub mod net;
pub mod postgres;
pub mod standin;

use std::future::Future;
use std::time::{Duration, Instant};

/// One wait's polling policy: the first retry after 10 ms, each pause twice the last up to
/// 200 ms. Quick conditions are seen within milliseconds, long waits (a docker rollout, a
/// Chromium start) cost at most five checks a second.
pub struct Poll {
    deadline: Instant,
    timeout: Duration,
    what: String,
    pause: Duration,
}

impl Poll {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(200);

    pub fn new(timeout: Duration, what: &str) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            timeout,
            what: what.to_owned(),
            pause: Self::FIRST,
        }
    }

    /// How long to pause before the next check; panics, naming what was awaited, once the
    /// deadline has passed.
    pub fn next_pause(&mut self) -> Duration {
        let now = Instant::now();
        assert!(
            now < self.deadline,
            "timed out after {:?} waiting for {}",
            self.timeout,
            self.what
        );
        let pause = self.pause.min(self.deadline - now);
        self.pause = (self.pause * 2).min(Self::MAX);
        pause
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut poll = Poll::new(timeout, what);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(poll.next_pause()).await;
    }
}

/// [`wait_for`] for tests without a runtime (they drive a binary through blocking calls).
pub fn wait_for_blocking<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut poll = Poll::new(timeout, what);
    loop {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(poll.next_pause());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let mut p = Poll::new(Duration::from_secs(60), "nothing");
        let pauses: Vec<_> = (0..7).map(|_| p.next_pause().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 200, 200]);
    }

    #[test]
    #[should_panic(expected = "waiting for the sky to fall")]
    fn a_passed_deadline_panics_naming_the_wait() {
        wait_for_blocking(Duration::from_millis(30), "the sky to fall", || None::<()>);
    }

    #[test]
    fn returns_the_first_value() {
        let mut n = 0;
        let v = wait_for_blocking(Duration::from_secs(5), "three calls", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn the_async_variant_polls_the_same_way() {
        let mut n = 0;
        let v = wait_for(Duration::from_secs(5), "three calls", || {
            n += 1;
            let done = n == 3;
            async move { done.then_some(()) }
        })
        .await;
        assert_eq!((v, n), ((), 3));
    }
}
