//! Tenants' activity as the gateway sees it: a proxied request marks its tenant used, an open
//! WebSocket keeps it used for as long as it is open, a use from elsewhere in the process (a
//! render of its pages: [`Inner::mark_used`]) marks it too, and every flush interval the tenants
//! used since the last flush are written to the store in one batch.
//!
//! Owns: [`Use`] (per tenant, kept across route changes: one relaxed atomic store per request,
//! no clock read, no lock) and the flush ([`Inner::flush_activity`]).
//!
//! Must not: write to the store per request, or count pug's own API calls (they never reach a
//! tenant route).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pug_types::TenantId;

use crate::Inner;

/// One tenant's use since the last flush.
#[derive(Debug, Default)]
pub(crate) struct Use {
    touched: AtomicBool,
    tunnels: AtomicUsize,
}

/// An open WebSocket of a tenant; the tenant counts as used until it is dropped.
pub(crate) struct OpenTunnel(Arc<Use>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl Use {
    /// A request for the tenant was let through.
    pub fn touch(&self) {
        // A load first: on the hot path the flag is usually set already, and a load does not
        // take the cache line away from the other workers.
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
        }
    }

    /// Counts an open WebSocket until the returned guard is dropped.
    pub fn open_tunnel(this: &Arc<Self>) -> OpenTunnel {
        this.tunnels.fetch_add(1, Ordering::Relaxed);
        this.touch();
        OpenTunnel(this.clone())
    }

    /// Whether the tenant was used since the last call (or has a WebSocket open now).
    fn take(&self) -> bool {
        let touched = self.touched.swap(false, Ordering::Relaxed);
        touched || self.tunnels.load(Ordering::Relaxed) > 0
    }
}

impl Inner {
    /// Marks `tenant` used by something other than a request through the gateway (the
    /// embedded renderer rendering its pages). A tenant without a route (not known to the
    /// gateway yet, or deleted) has nothing to keep awake: nothing is marked.
    pub(crate) fn mark_used(&self, tenant: &TenantId) {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = routes.get(tenant) {
            r.activity.touch();
        }
    }

    /// Writes, in one batch, that every tenant used since the last flush was used at `now_ms`.
    /// Returns how many tenants it wrote.
    pub(crate) async fn flush_activity(&self, now_ms: i64) -> Result<usize, pug_store::StoreError> {
        let used: Vec<(TenantId, i64)> = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, r)| r.activity.take())
            .map(|(id, _)| (id.clone(), now_ms))
            .collect();
        if used.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.record_activity(&used).await {
            // Not lost: mark them again, so the next flush retries.
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            for (id, _) in &used {
                if let Some(r) = routes.get(id) {
                    r.activity.touch();
                }
            }
            return Err(e);
        }
        Ok(used.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_counts_as_used_once_per_touch_and_while_a_tunnel_is_open() {
        let u = Arc::new(Use::default());
        assert!(!u.take(), "never used");
        u.touch();
        u.touch();
        assert!(u.take());
        assert!(!u.take(), "taken by the last flush");
        let tunnel = Use::open_tunnel(&u);
        assert!(u.take());
        assert!(u.take(), "still open: still used");
        drop(tunnel);
        assert!(u.take(), "its closing counts once more");
        assert!(!u.take());
    }
}
