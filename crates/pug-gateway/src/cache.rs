//! The gateway's cache of auth lookups (sessions by id, memberships by user): a value is
//! reused for at most `ttl`, so a revoked session or membership stops working within it.
//!
//! Two things keep the store off the request path under load:
//! - **single flight**: concurrent misses for one key wait for one store read, instead of
//!   every in-flight request of a busy person reading the same row at once;
//! - **refresh ahead**: a hit older than half the TTL is served as is and re-read in the
//!   background (once), so steady traffic never waits for an expired entry. Before this, every
//!   expiry stalled all of a person's concurrent requests behind a burst of identical reads
//!   (p99 144 ms against 10 ms in `bench/gateway`).
//!
//! Written here because the cache crates do not do both: moka's `get_with` is single-flight,
//! but its refresh-after-write is not implemented, and a value must never outlive `ttl`.
//!
//! Must not: serve a value older than `ttl`, or hold its lock across a store read.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::auth::lock;

pub(crate) struct AuthCache<V> {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<String, Entry<V>>>,
}

struct Entry<V> {
    /// Filled by the first reader; the others wait on it.
    cell: Arc<OnceCell<V>>,
    /// When the read that fills `cell` started (a value is never older than this).
    at: Instant,
    /// A background re-read is under way.
    refreshing: bool,
}

impl<V: Clone + Send + Sync + 'static> AuthCache<V> {
    pub fn new(ttl: Duration, max_entries: usize) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            max_entries,
            entries: Mutex::default(),
        })
    }

    /// The value of `key`: cached if younger than the TTL, else read with `fetch` (once for
    /// all concurrent callers). A failed read is not cached.
    pub async fn get<F, Fut, E>(self: &Arc<Self>, key: &str, fetch: F) -> Result<V, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + 'static,
    {
        let now = Instant::now();
        let (cell, refresh) = {
            let mut entries = lock(&self.entries);
            match entries.get_mut(key) {
                Some(e) if now.duration_since(e.at) < self.ttl => {
                    let refresh = e.cell.initialized()
                        && !e.refreshing
                        && now.duration_since(e.at) > self.ttl / 2;
                    if refresh {
                        e.refreshing = true;
                    }
                    (e.cell.clone(), refresh)
                }
                _ => {
                    if entries.len() >= self.max_entries {
                        entries.retain(|_, e| now.duration_since(e.at) < self.ttl);
                        if entries.len() >= self.max_entries {
                            entries.clear();
                        }
                    }
                    let cell = Arc::new(OnceCell::new());
                    entries.insert(
                        key.to_owned(),
                        Entry {
                            cell: cell.clone(),
                            at: now,
                            refreshing: false,
                        },
                    );
                    (cell, false)
                }
            }
        };
        if refresh {
            let me = self.clone();
            let key = key.to_owned();
            let read = fetch();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = read.await;
                // An entry removed meanwhile (the session ended) stays removed.
                if let Some(e) = lock(&me.entries).get_mut(&key) {
                    if let Ok(value) = result {
                        e.cell = Arc::new(OnceCell::new_with(Some(value)));
                        e.at = started;
                    }
                    e.refreshing = false;
                }
            });
        }
        cell.get_or_try_init(fetch).await.cloned()
    }

    /// Forgets `key` (a session just ended); a background read under way does not bring it
    /// back.
    pub fn remove(&self, key: &str) {
        lock(&self.entries).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(
        reads: &Arc<AtomicUsize>,
        value: u32,
    ) -> impl Fn() -> std::future::Ready<Result<u32, ()>> {
        let reads = reads.clone();
        move || {
            reads.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(value))
        }
    }

    #[tokio::test]
    async fn concurrent_misses_read_once() {
        let cache = AuthCache::<u32>::new(Duration::from_secs(60), 10);
        let reads = Arc::new(AtomicUsize::new(0));
        let slow = {
            let reads = reads.clone();
            move || {
                reads.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::task::yield_now().await;
                    Ok::<_, ()>(7)
                }
            }
        };
        let all = futures::future::join_all((0..32).map(|_| cache.get("k", &slow))).await;
        assert!(all.iter().all(|r| *r == Ok(7)));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn old_hits_are_refreshed_in_the_background_and_never_outlive_the_ttl() {
        let ttl = Duration::from_secs(10);
        let cache = AuthCache::<u32>::new(ttl, 10);
        let reads = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.get("k", counting(&reads, 1)).await, Ok(1));
        // Young: served from the cache.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get("k", counting(&reads, 2)).await, Ok(1));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Past half the TTL: the old value now, the new one after the background read.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(cache.get("k", counting(&reads, 3)).await, Ok(1));
        tokio::task::yield_now().await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(cache.get("k", counting(&reads, 4)).await, Ok(3));
        // Idle past the TTL: read again before answering.
        tokio::time::advance(ttl * 2).await;
        assert_eq!(cache.get("k", counting(&reads, 5)).await, Ok(5));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failed_reads_are_not_cached_and_removal_forgets() {
        let cache = AuthCache::<u32>::new(Duration::from_secs(60), 10);
        assert_eq!(
            cache.get("k", || std::future::ready(Err("down"))).await,
            Err("down")
        );
        assert_eq!(
            cache
                .get("k", || std::future::ready(Ok::<_, &str>(1)))
                .await,
            Ok(1)
        );
        cache.remove("k");
        assert_eq!(
            cache
                .get("k", || std::future::ready(Ok::<_, &str>(2)))
                .await,
            Ok(2)
        );
    }

    #[tokio::test]
    async fn a_full_cache_makes_room() {
        let cache = AuthCache::<u32>::new(Duration::from_secs(60), 2);
        for k in ["a", "b", "c"] {
            assert_eq!(
                cache.get(k, || std::future::ready(Ok::<_, ()>(1))).await,
                Ok(1)
            );
        }
        assert!(lock(&cache.entries).len() <= 2);
    }
}
