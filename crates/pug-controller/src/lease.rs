//! What this pug holds of the store's leases, and when each runs out by its own clock.
//!
//! Owns: the table of work leases this pug holds (tenant → fencing token and local deadline),
//! the `fleet` lease (whether this pug is the one running fleet-wide jobs), whether the last
//! heartbeat reached the store in time ([`Leases::alive`], which `/readyz` reports), and the
//! heartbeat loop that renews them all ([`heartbeat_loop`]).
//!
//! Self-fencing: a local deadline is the time the store's lease was asked for (before the
//! store set it) plus the lease minus a margin, so it always passes before the store's lease
//! does. A pass whose deadline passes is stopped (the queue loop drops it, [`Leases::lost`])
//! and may not start another action ([`Leases::check`]); only then can another pug's claim
//! succeed. What the heartbeat does with the store's answer is a pure function
//! ([`apply_renewal`]).
//!
//! Must not: read or write the store except through the heartbeat, or decide what a pass does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pug_store::{Replica, Store};
use pug_types::TenantId;
use tokio_util::sync::CancellationToken;

/// One work lease this pug holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub fence: i64,
    /// When it runs out by this pug's clock (before the store's lease does).
    pub deadline: Instant,
}

/// The leases of one pug process.
#[derive(Debug)]
pub struct Leases {
    owner: String,
    /// The lease length asked of the store.
    lease: Duration,
    held: Mutex<HashMap<TenantId, Held>>,
    /// The `fleet` lease's local deadline, when this pug holds it.
    fleet: Mutex<Option<Instant>>,
    /// Until when the last successful heartbeat vouches for this pug.
    alive_until: Mutex<Option<Instant>>,
}

impl Leases {
    pub(crate) fn new(owner: String, lease: Duration) -> Self {
        Self {
            owner,
            lease,
            held: Mutex::default(),
            fleet: Mutex::default(),
            alive_until: Mutex::default(),
        }
    }

    /// This pug's owner id in the store.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The lease length asked of the store.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The part of a lease this pug gives up at its end, so that it has stopped before the
    /// store's lease runs out: a fifth of it.
    fn local(&self) -> Duration {
        self.lease - self.lease / 5
    }

    /// Whether the last heartbeat reached the store less than a lease ago: while false, this
    /// pug cannot hold a lease and does not act.
    pub fn alive(&self) -> bool {
        self.alive_until
            .lock()
            .expect("leases")
            .is_some_and(|until| Instant::now() < until)
    }

    /// Whether this pug holds the `fleet` lease now.
    pub fn is_fleet_leader(&self) -> bool {
        self.fleet
            .lock()
            .expect("leases")
            .is_some_and(|until| Instant::now() < until)
    }

    /// Records a lease claimed at `since` (when the claim was sent).
    pub(crate) fn hold(&self, tenant: &TenantId, fence: i64, since: Instant) {
        let held = Held {
            fence,
            deadline: since + self.local(),
        };
        self.held
            .lock()
            .expect("leases")
            .insert(tenant.clone(), held);
    }

    /// Forgets the lease of `tenant` (its pass is over).
    pub(crate) fn drop_lease(&self, tenant: &TenantId) {
        self.held.lock().expect("leases").remove(tenant);
    }

    /// The fencing token of this pug's lease of `tenant`, while it holds one.
    pub(crate) fn fence(&self, tenant: &TenantId) -> Option<i64> {
        self.held
            .lock()
            .expect("leases")
            .get(tenant)
            .map(|h| h.fence)
    }

    /// How many work leases this pug holds.
    pub fn held(&self) -> usize {
        self.held.lock().expect("leases").len()
    }

    /// Whether a pass of `tenant` may take its next action: yes unless this pug holds (held)
    /// a lease of it that ran out. A pass run outside the queue holds none and is not fenced.
    pub(crate) fn check(&self, tenant: &TenantId) -> bool {
        self.held
            .lock()
            .expect("leases")
            .get(tenant)
            .is_none_or(|h| Instant::now() < h.deadline)
    }

    /// Completes when the lease of `tenant` runs out (at once if this pug holds none).
    pub(crate) async fn lost(&self, tenant: &TenantId) {
        loop {
            let deadline = match self.held.lock().expect("leases").get(tenant) {
                Some(h) => h.deadline,
                None => return,
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }

    /// The leases to renew: (tenant, fencing token) of every lease held now.
    fn asked(&self) -> Vec<(TenantId, i64)> {
        self.held
            .lock()
            .expect("leases")
            .iter()
            .map(|(t, h)| (t.clone(), h.fence))
            .collect()
    }

    /// Takes in a heartbeat sent at `sent`, asking to renew `asked`, that the store answered
    /// with `beat`.
    fn renewed(&self, sent: Instant, asked: &[(TenantId, i64)], beat: &pug_store::Heartbeat) {
        let until = sent + self.local();
        apply_renewal(
            &mut self.held.lock().expect("leases"),
            asked,
            &beat.renewed,
            sent,
            until,
        );
        *self.fleet.lock().expect("leases") = beat.fleet.map(|_| until);
        *self.alive_until.lock().expect("leases") = Some(until);
    }
}

/// Applies the store's answer to a heartbeat sent at `sent` that asked to renew `asked`: a
/// lease the store renewed (same fencing token) runs until `until`; one asked for that it did
/// not renew is lost now (its deadline becomes `sent`, already past). A lease not asked for
/// (claimed meanwhile) keeps its own deadline.
pub(crate) fn apply_renewal(
    held: &mut HashMap<TenantId, Held>,
    asked: &[(TenantId, i64)],
    renewed: &[(TenantId, i64)],
    sent: Instant,
    until: Instant,
) {
    let renewed: HashMap<&TenantId, i64> = renewed.iter().map(|(t, f)| (t, *f)).collect();
    for (tenant, fence) in asked {
        let Some(h) = held.get_mut(tenant) else {
            continue;
        };
        if h.fence != *fence {
            continue;
        }
        match renewed.get(tenant) {
            Some(fence) if *fence == h.fence && h.deadline > sent => h.deadline = until,
            _ => h.deadline = h.deadline.min(sent),
        }
    }
}

/// Renews this pug's leases every third of a lease until `shutdown`, and takes the `fleet`
/// lease when `fleet` is true and it is free.
pub(crate) async fn heartbeat_loop(
    store: Store,
    leases: std::sync::Arc<Leases>,
    me: Replica,
    fleet: bool,
    shutdown: CancellationToken,
) {
    let every = leases.lease / 3;
    let lease_ms = leases.lease.as_millis() as i64;
    let mut failing = false;
    loop {
        let sent = Instant::now();
        let asked = leases.asked();
        let fences: Vec<i64> = asked.iter().map(|(_, f)| *f).collect();
        match store.heartbeat(&me, &fences, lease_ms, fleet).await {
            Ok(beat) => {
                let was_leader = leases.is_fleet_leader();
                leases.renewed(sent, &asked, &beat);
                if failing {
                    tracing::info!("the store answers the heartbeat again; acting again");
                    failing = false;
                }
                if beat.fleet.is_some() && !was_leader {
                    tracing::info!(owner = %me.owner, "this pug runs the fleet-wide jobs (resync, orphan removal)");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, lease_ms, "heartbeat failed: this pug stops acting once its leases run out");
                    failing = true;
                }
            }
        }
        let next = sent + every;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A new owner id: this host, this process and the start time, unique per pug process.
pub fn new_owner_id() -> String {
    format!(
        "{}-{}-{}",
        hostname(),
        std::process::id(),
        pug_store::now_ms()
    )
}

/// This machine's (or container's) host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "pug".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn a_renewal_extends_what_the_store_renewed_and_fences_what_it_did_not() {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        let held_at = |fence, deadline| Held {
            fence,
            deadline: at(deadline),
        };
        let mut held = HashMap::from([
            // renewed, same token: extended
            (t("a"), held_at(1, 2_400)),
            // renewed by the store under another token (taken over and claimed again): lost
            (t("b"), held_at(2, 2_400)),
            // not renewed (its store lease ran out, maybe another pug's now): lost
            (t("c"), held_at(3, 2_400)),
            // claimed while the heartbeat was on its way (not asked for): keeps its deadline
            (t("d"), held_at(4, 3_300)),
            // its local deadline had passed already: stays lost even if renewed
            (t("e"), held_at(5, 900)),
        ]);
        let asked = vec![(t("a"), 1), (t("b"), 2), (t("c"), 3), (t("e"), 5)];
        let renewed = vec![(t("a"), 1), (t("b"), 9), (t("e"), 5)];
        apply_renewal(&mut held, &asked, &renewed, at(1_000), at(3_400));
        assert_eq!(held[&t("a")].deadline, at(3_400));
        assert_eq!(held[&t("b")].deadline, at(1_000));
        assert_eq!(held[&t("c")].deadline, at(1_000));
        assert_eq!(held[&t("d")].deadline, at(3_300));
        assert_eq!(held[&t("e")].deadline, at(900));
    }

    #[test]
    fn a_local_deadline_passes_before_the_stores_lease() {
        let leases = Leases::new("me".into(), Duration::from_secs(3));
        let since = Instant::now();
        leases.hold(&t("a"), 7, since);
        let h = leases.held.lock().unwrap()[&t("a")];
        assert!(h.deadline < since + leases.lease);
        assert_eq!(h.fence, 7);
        assert!(leases.check(&t("a")));
        assert!(leases.check(&t("unheld")));
        assert!(!leases.alive(), "no heartbeat yet");
    }
}
