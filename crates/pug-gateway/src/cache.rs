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
//! It also holds the gateway's embed keys ([`KeyRing`]): the keys the periodic refresh read,
//! and, for a token whose `kid` is not among them, a read of the store that happens at most
//! once per interval for all such tokens together (single flight, no refresh ahead), with the
//! answer for each unknown `kid` remembered for that interval. Before, every request with a
//! made-up `kid` read and decrypted every key (security review F12).
//!
//! Must not: serve a value older than `ttl`, or hold its lock across a store read.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use pug_store::{EmbedKeyInfo, Store, StoreError};
use pug_types::SecretString;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::throttle::lock;

pub(crate) struct AuthCache<V> {
    ttl: Duration,
    max_entries: usize,
    /// Re-read a hit older than half the TTL in the background.
    refresh_ahead: bool,
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
            refresh_ahead: true,
            entries: Mutex::default(),
        })
    }

    /// A cache that reads each key at most once per `ttl`: no refresh ahead (which would read
    /// a busy key about twice per TTL).
    pub fn at_most_once_per(ttl: Duration, max_entries: usize) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            max_entries,
            refresh_ahead: false,
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
                    let refresh = self.refresh_ahead
                        && e.cell.initialized()
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

    /// Forgets every entry; a background read under way does not bring one back (a sign-out
    /// ended sessions cached under ids this replica cannot
    /// derive: the sign-in's sessions on other hosts). Sign-outs are rare; the cache refills.
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }
}

/// The embed keys with their secrets, as read from the store.
pub(crate) type Keys = Arc<Vec<(EmbedKeyInfo, SecretString)>>;

/// Unknown `kid`s remembered at once (the set is cleared when full).
const UNKNOWN_KIDS_MAX: usize = 10_000;

/// The gateway's embed keys: what the periodic refresh read, plus bounded reads for tokens
/// whose key is not (yet) among them.
pub(crate) struct KeyRing {
    store: Store,
    current: RwLock<Keys>,
    /// The one store read for unknown keys, at most once per interval.
    reads: Arc<AuthCache<Keys>>,
    /// `kid` → whether it named a key after a read (`false`: remembered as unknown).
    kids: Arc<AuthCache<bool>>,
    /// Counts every read of the keys from the store.
    store_reads: Counter,
}

impl KeyRing {
    pub fn new(store: Store, interval: Duration, store_reads: Counter) -> Arc<Self> {
        Arc::new(Self {
            store,
            current: RwLock::default(),
            reads: AuthCache::at_most_once_per(interval, 1),
            kids: AuthCache::at_most_once_per(interval, UNKNOWN_KIDS_MAX),
            store_reads,
        })
    }

    /// The keys as last read.
    pub fn current(&self) -> Keys {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether key `id` existed at the last read (a session minted with a deleted key ends as
    /// soon as the refresh sees it gone).
    pub fn contains(&self, id: &str) -> bool {
        self.current().iter().any(|(k, _)| k.id == id)
    }

    /// Reads the keys from the store now (the periodic refresh).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        self.store_reads.inc();
        let keys = Arc::new(self.store.embed_keys().await?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// Whether `kid` (empty: a token without one) names a key, for a token no current key
    /// verified: answered from a read at most one interval old, made once for all callers.
    pub async fn lookup_unknown(self: &Arc<Self>, kid: &str) -> Result<bool, StoreError> {
        let me = self.clone();
        let kid_owned = kid.to_owned();
        self.kids
            .get(kid, move || {
                let (me, kid) = (me.clone(), kid_owned.clone());
                async move {
                    let keys = me.read_once().await?;
                    Ok(if kid.is_empty() {
                        !keys.is_empty()
                    } else {
                        keys.iter().any(|(k, _)| k.id == kid)
                    })
                }
            })
            .await
    }

    /// The keys from a store read at most one interval old (single flight); a read made here
    /// also becomes the current keys.
    async fn read_once(self: &Arc<Self>) -> Result<Keys, StoreError> {
        let me = self.clone();
        self.reads
            .get("keys", move || {
                let me = me.clone();
                async move {
                    me.store_reads.inc();
                    let keys: Keys = Arc::new(me.store.embed_keys().await?);
                    *me.current.write().unwrap_or_else(|e| e.into_inner()) = keys.clone();
                    Ok::<_, StoreError>(keys)
                }
            })
            .await
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
        cache.clear();
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

    #[tokio::test(start_paused = true)]
    async fn at_most_once_per_ttl_never_reads_ahead() {
        let ttl = Duration::from_secs(10);
        let cache = AuthCache::<u32>::at_most_once_per(ttl, 10);
        let reads = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.get("k", counting(&reads, 1)).await, Ok(1));
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(cache.get("k", counting(&reads, 2)).await, Ok(1));
        tokio::task::yield_now().await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "no read ahead");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cache.get("k", counting(&reads, 3)).await, Ok(3));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}
