//! Admission of renders: `max_concurrency` slots and a queue of `max_queue`, shared fairly
//! between tenants, so that one tenant's slow renders cannot make every other tenant's get 429.
//!
//! Owns: who a render counts against ([`fair_key`]: a tenant's token scope inside `pug serve`,
//! else Grafana's `X-Tenant-ID`), the decision ([`decide`], pure: run, wait, or refuse) and the
//! table of running and waiting renders per key that it is made on ([`Admission`]).
//!
//! Must not: know about browsers or pages, or measure time itself (the caller's deadline
//! bounds a wait).
//!
//! The rule: a key may hold at most [`share`] of the slots (half, rounded up) and half of the
//! queue, so a second tenant always finds a slot or a place in the queue while the first one
//! has all it may have. A waiting render starts when a slot is free and its key is under its
//! share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::security::Scope;

/// What one key may hold of `total`: half of it, rounded up, and at least one.
pub fn share(total: usize) -> usize {
    total.div_ceil(2).max(1)
}

/// What [`decide`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Take a slot now.
    Run,
    /// Wait in the queue (or keep waiting) for a slot.
    Wait,
    /// 429: the queue, or this key's share of it, is full.
    Refuse,
}

/// The counts a decision is made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Renders running, all keys.
    pub running: usize,
    /// Renders waiting, all keys (not counting the one being decided).
    pub waiting: usize,
    /// Renders of this key running.
    pub key_running: usize,
    /// Renders of this key waiting (not counting the one being decided).
    pub key_waiting: usize,
}

/// Whether a render of a key with `c` may run now, wait, or is refused. `queued`: it is
/// already in the queue (a waiter that re-checks is never refused).
pub fn decide(c: Counts, max_concurrency: usize, max_queue: usize, queued: bool) -> Decision {
    if c.running < max_concurrency && c.key_running < share(max_concurrency) {
        return Decision::Run;
    }
    if queued || (c.waiting < max_queue && c.key_waiting < share(max_queue)) {
        return Decision::Wait;
    }
    Decision::Refuse
}

/// Who a render counts against: inside `pug serve` the tenant its token belongs to (Grafana's
/// header could be set to anything); standalone, Grafana's `X-Tenant-ID` (its callback host
/// when it sends none), as the reference renderer's rate limiter does.
pub fn fair_key(scope: &Scope, tenant_header: Option<&str>) -> String {
    match scope.hosts() {
        Some(hosts) if !hosts.is_empty() => format!("scope:{}", hosts.join(",")),
        _ => format!("tenant:{}", tenant_header.unwrap_or("")),
    }
}

#[derive(Default)]
struct Table {
    running: usize,
    waiting: usize,
    /// Per key: (running, waiting).
    keys: HashMap<String, (usize, usize)>,
}

impl Table {
    fn counts(&self, key: &str) -> Counts {
        let (key_running, key_waiting) = self.keys.get(key).copied().unwrap_or_default();
        Counts {
            running: self.running,
            waiting: self.waiting,
            key_running,
            key_waiting,
        }
    }

    fn entry(&mut self, key: &str) -> &mut (usize, usize) {
        self.keys.entry(key.to_owned()).or_default()
    }

    fn forget_idle(&mut self, key: &str) {
        if self.keys.get(key) == Some(&(0, 0)) {
            self.keys.remove(key);
        }
    }
}

/// The running and waiting renders per key, and the wake-up of waiters when a slot frees.
pub struct Admission {
    table: Mutex<Table>,
    freed: Notify,
    max_concurrency: usize,
    max_queue: usize,
}

/// Why a render was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// The queue (or the key's share of it) is full: 429.
    Full,
    /// The deadline passed while waiting: 408.
    Timeout,
}

/// A slot, given back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.admission.lock();
        t.running -= 1;
        t.entry(&self.key).0 -= 1;
        t.forget_idle(&self.key);
        drop(t);
        self.admission.freed.notify_waiters();
    }
}

/// Removes a waiter from the table when it stops waiting (admitted, timed out, or dropped).
struct Waiting<'a> {
    admission: &'a Admission,
    key: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut t = self.admission.lock();
        t.waiting -= 1;
        t.entry(self.key).1 -= 1;
        t.forget_idle(self.key);
    }
}

impl Admission {
    pub fn new(max_concurrency: usize, max_queue: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
            max_concurrency: max_concurrency.max(1),
            max_queue,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(self: &Arc<Self>, t: &mut Table, key: &str) -> Slot {
        t.running += 1;
        t.entry(key).0 += 1;
        Slot {
            admission: self.clone(),
            key: key.to_owned(),
        }
    }

    /// Renders running now (all keys).
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// A slot for a render of `key`: at once, after waiting until `deadline`, or not.
    /// `on_queue` is called once if the render has to wait (for the queue gauge).
    pub async fn admit(
        self: &Arc<Self>,
        key: &str,
        deadline: Instant,
        on_queue: impl FnOnce(),
    ) -> Result<Slot, NotAdmitted> {
        {
            let mut t = self.lock();
            match decide(t.counts(key), self.max_concurrency, self.max_queue, false) {
                Decision::Run => return Ok(self.take(&mut t, key)),
                Decision::Refuse => return Err(NotAdmitted::Full),
                Decision::Wait => {
                    t.waiting += 1;
                    t.entry(key).1 += 1;
                }
            }
        }
        on_queue();
        let _waiting = Waiting {
            admission: self,
            key,
        };
        loop {
            // Registered before the check, so a slot freed in between still wakes this waiter.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut t = self.lock();
                let mut c = t.counts(key);
                // This waiter is among the counts; decide as the queue's member it is.
                c.waiting -= 1;
                c.key_waiting -= 1;
                if decide(c, self.max_concurrency, self.max_queue, true) == Decision::Run {
                    return Ok(self.take(&mut t, key));
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(NotAdmitted::Timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_gets_at_most_half_the_slots_and_half_the_queue() {
        use Decision::*;
        let c = |running, waiting, key_running, key_waiting| Counts {
            running,
            waiting,
            key_running,
            key_waiting,
        };
        // max_concurrency 5 (share 3), max_queue 50 (share 25).
        let cases: &[(&str, Counts, bool, Decision)] = &[
            ("idle", c(0, 0, 0, 0), false, Run),
            ("room, under its share", c(2, 0, 2, 0), false, Run),
            ("at its share of slots: waits", c(3, 0, 3, 0), false, Wait),
            ("another key, with room: runs", c(3, 0, 0, 0), false, Run),
            ("slots full: waits", c(5, 10, 2, 0), false, Wait),
            (
                "its share of the queue is full: refused",
                c(3, 25, 3, 25),
                false,
                Refuse,
            ),
            (
                "another key with the first one's queue full: waits",
                c(5, 25, 2, 0),
                false,
                Wait,
            ),
            (
                "the whole queue is full: refused",
                c(5, 50, 0, 0),
                false,
                Refuse,
            ),
            ("a waiter is never refused", c(5, 50, 3, 25), true, Wait),
            (
                "a waiter runs once a slot is free",
                c(4, 10, 0, 5),
                true,
                Run,
            ),
            (
                "a waiter at its share keeps waiting",
                c(4, 10, 3, 5),
                true,
                Wait,
            ),
        ];
        for (what, counts, queued, want) in cases {
            assert_eq!(decide(*counts, 5, 50, *queued), *want, "{what}");
        }
        assert_eq!(share(1), 1);
        assert_eq!(share(2), 1);
        assert_eq!(share(5), 3);
        assert_eq!(share(0), 1);
        assert_eq!(decide(c(0, 0, 0, 0), 1, 0, false), Run);
        assert_eq!(decide(c(1, 0, 0, 0), 1, 0, false), Refuse, "no queue");
    }

    #[test]
    fn renders_count_against_their_tenant() {
        let a = Scope::Hosts(vec!["127.0.0.1:3000".into()]);
        let b = Scope::Hosts(vec!["127.0.0.1:3001".into()]);
        assert_ne!(fair_key(&a, None), fair_key(&b, None));
        assert_eq!(
            fair_key(&a, Some("x")),
            fair_key(&a, Some("y")),
            "a tenant's token decides, not the header it sends"
        );
        assert_eq!(fair_key(&Scope::Any, Some("acme")), "tenant:acme");
        assert_ne!(
            fair_key(&Scope::Any, Some("acme")),
            fair_key(&Scope::Any, Some("globex"))
        );
        assert_eq!(fair_key(&Scope::Any, None), "tenant:");
    }

    #[tokio::test]
    async fn one_tenants_slow_renders_leave_room_for_another() {
        let adm = Admission::new(2, 2);
        let far = Instant::now() + Duration::from_secs(60);
        let soon = Instant::now() + Duration::from_millis(50);
        // Tenant a holds its share (1 of 2 slots) and its share of the queue (1 of 2).
        let a1 = adm.admit("a", far, || {}).await.unwrap();
        let queued = {
            let adm = adm.clone();
            tokio::spawn(async move { adm.admit("a", far, || {}).await.map(|_| ()) })
        };
        while adm.lock().waiting == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            adm.admit("a", soon, || {}).await.err(),
            Some(NotAdmitted::Full),
            "a's share of the queue is full"
        );
        // b renders at once.
        let b1 = adm.admit("b", far, || {}).await.unwrap();
        assert_eq!(adm.running(), 2);
        // A full house: b waits and times out (408), it is not refused.
        assert_eq!(
            adm.admit("b", soon, || {}).await.err(),
            Some(NotAdmitted::Timeout)
        );
        // b's slot frees: a's waiter still may not run (a has its share), so it waits on; a's
        // own slot frees: its waiter runs.
        drop(b1);
        tokio::task::yield_now().await;
        assert!(!queued.is_finished());
        drop(a1);
        queued.await.unwrap().unwrap();
        assert_eq!(adm.running(), 0, "every slot came back");
        assert!(adm.lock().keys.is_empty());
    }
}
