//! Which Chromium serves renders, and its replacement: launching (with retries), handing a
//! render its browser, retiring a browser that crashed, hung, grew too large or reached its
//! render quota, and the supervisor that watches the current one.
//!
//! Owns: `current` and the replacement protocol (successor first for a browser that still
//! works, at once for one that does not), the restart metrics, the teardown tasks.
//!
//! Must not: run renders (that is [`super::jobs`] through [`Inner::with_context`]) or admit
//! them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::browser::{InUse, Instance};
use super::{page, Inner};
use crate::error::{RenderError, RendererError};
use crate::metrics::{RestartLabel, RestartReason};

/// Pings in a row a browser must miss before it is replaced as hung.
const HUNG_AFTER_MISSES: u32 = 2;

/// Launches tried before a render (or a replacement) gives up on starting Chromium. A launch
/// that stalls is cut short by [`super::browser::LAUNCH_TIMEOUT`] and tried again: a healthy launch
/// takes well under a second, and one stalled start must not cost a render its whole deadline.
const LAUNCH_ATTEMPTS: u32 = 3;

impl Inner {
    /// The running Chromium, launching one if there is none (or the last one died).
    pub(super) async fn instance(&self) -> Result<Arc<Instance>, RenderError> {
        let mut current = self.current.lock().await;
        self.current_or_launch(&mut current).await
    }

    /// The running Chromium with this render registered on it, both under the lock that
    /// [`Self::retire`] takes: a browser being retired has either counted the render before
    /// its teardown waits for renders to drain, or is no longer handed out. (Registering after
    /// the lock is released let a recycle at the render limit kill a browser a render had just
    /// been given: a 500 under load.)
    pub(super) async fn begin_render(&self) -> Result<(Arc<Instance>, InUse), RenderError> {
        let mut current = self.current.lock().await;
        let instance = self.current_or_launch(&mut current).await?;
        let in_use = instance.begin();
        Ok((instance, in_use))
    }

    pub(super) async fn current_or_launch(
        &self,
        current: &mut Option<Arc<Instance>>,
    ) -> Result<Arc<Instance>, RenderError> {
        if let Some(instance) = current.as_ref() {
            if !instance.is_dead() {
                return Ok(instance.clone());
            }
            let dead = current.take().expect("checked above");
            self.metrics
                .restarts
                .get_or_create(&RestartLabel {
                    reason: RestartReason::Crashed,
                })
                .inc();
            self.spawn_close(dead, Duration::ZERO);
        }
        if self.shutdown.is_cancelled() {
            return Err(RenderError::Internal(
                "the renderer is shutting down".into(),
            ));
        }
        let instance = self
            .launch()
            .await
            .map_err(|e| RenderError::Internal(e.to_string()))?;
        *current = Some(instance.clone());
        Ok(instance)
    }

    /// Starts a Chromium, trying again when a start stalls or fails ([`LAUNCH_ATTEMPTS`]).
    pub(super) async fn launch(&self) -> Result<Arc<Instance>, RendererError> {
        let mut attempt = 1;
        loop {
            let id = self.next_id.fetch_add(1, Ordering::AcqRel);
            match Instance::launch(id, &self.config, self.proxy.addr).await {
                Ok(instance) => return Ok(instance),
                Err(e) if attempt < LAUNCH_ATTEMPTS && !self.shutdown.is_cancelled() => {
                    tracing::warn!(id, attempt, error = %e, "starting Chromium failed; trying again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Replaces `instance` (if it still is current) and tears it down once its renders have
    /// finished (at most `grace`).
    ///
    /// A browser that still works (render limit, memory) is replaced successor first: the
    /// new Chromium starts while the old one keeps serving, and renders switch to it only once
    /// it answers, so no render waits for a launch (it may serve a few renders past its limit
    /// meanwhile). If the successor cannot start, the old browser stays in service and the
    /// next planned replacement tries again. A dead or hung browser is taken out at once.
    pub(super) async fn retire(
        &self,
        instance: &Arc<Instance>,
        reason: RestartReason,
        grace: Duration,
    ) {
        let planned = matches!(reason, RestartReason::RenderLimit | RestartReason::Memory);
        if planned && !instance.is_dead() {
            let is_current =
                |c: &Option<Arc<Instance>>| c.as_ref().is_some_and(|c| Arc::ptr_eq(c, instance));
            if !is_current(&*self.current.lock().await) {
                return; // replaced already
            }
            if self.replacing.swap(true, Ordering::SeqCst) {
                return; // another render's cleanup is already replacing it
            }
            if self.shutdown.is_cancelled() {
                // Shutdown checks `replacing` after cancelling: it either waits for this
                // replacement or this replacement sees the cancellation here.
                self.replacing.store(false, Ordering::SeqCst);
                return;
            }
            let successor = self.launch().await;
            let mut current = self.current.lock().await;
            let still_current = is_current(&current);
            match successor {
                Ok(next) if still_current && !self.shutdown.is_cancelled() => {
                    tracing::info!(
                        id = instance.id,
                        next = next.id,
                        ?reason,
                        "replacing Chromium"
                    );
                    *current = Some(next);
                    self.metrics
                        .restarts
                        .get_or_create(&RestartLabel { reason })
                        .inc();
                    self.spawn_close(instance.clone(), grace);
                }
                // Replaced meanwhile (it crashed), or shutting down: the successor is not needed.
                Ok(next) => self.spawn_close(next, Duration::ZERO),
                Err(e) => tracing::warn!(
                    id = instance.id,
                    error = %e,
                    "cannot start a successor; the current Chromium stays in service"
                ),
            }
            self.replacing.store(false, Ordering::SeqCst);
            return;
        }
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, instance)) {
            current.take();
            tracing::info!(id = instance.id, ?reason, "replacing Chromium");
            self.metrics
                .restarts
                .get_or_create(&RestartLabel { reason })
                .inc();
            self.spawn_close(instance.clone(), grace);
        }
    }

    pub(super) fn spawn_close(&self, instance: Arc<Instance>, grace: Duration) {
        let mut closing = self
            .closing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Reap finished teardowns so the set does not grow.
        while closing.try_join_next().is_some() {}
        closing.spawn(async move { instance.close(grace).await });
    }
}

/// Replaces Chromium when it dies (at once), stops answering, or grows past the memory limit.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let interval = inner.config.health_check_interval;
    // Missed pings in a row, of the current browser only.
    let mut missed: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    loop {
        // Keep a warm browser ready for the next render.
        if inner.current.lock().await.is_none() && !inner.shutdown.is_cancelled() {
            if let Err(e) = inner.instance().await {
                tracing::error!(error = %e, "cannot start Chromium");
            }
        }
        let current = inner.current.lock().await.clone();
        let died = async {
            match &current {
                Some(i) => i.dead.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = died => {
                if let Some(i) = &current {
                    inner.retire(i, RestartReason::Crashed, Duration::ZERO).await;
                }
            }
            _ = tokio::time::sleep(interval) => {
                let Some(i) = &current else { continue };
                for blank in i.take_idle() {
                    let i = i.clone();
                    tokio::spawn(async move { page::dispose_context(&i, blank.ctx).await });
                }
                let ping_timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(5));
                if !i.ping(ping_timeout).await {
                    // Two misses in a row: one slow answer on a loaded machine is not a hang,
                    // and replacing the browser fails every render it is serving.
                    let misses = missed.get(&i.id).copied().unwrap_or(0) + 1;
                    missed.clear();
                    if misses < HUNG_AFTER_MISSES {
                        missed.insert(i.id, misses);
                        tracing::info!(id = i.id, "Chromium is slow to answer; pinging again");
                        continue;
                    }
                    tracing::warn!(id = i.id, "Chromium does not answer; replacing it");
                    inner.retire(i, RestartReason::Hung, Duration::ZERO).await;
                } else {
                    missed.clear();
                    let limit = inner.config.max_browser_rss_bytes;
                    let rss = i.rss_bytes();
                    if limit > 0 && rss > limit {
                        tracing::info!(id = i.id, rss, limit, "Chromium is above its memory limit");
                        // Successor first, which takes a launch: not in this loop, which must
                        // keep watching the current browser meanwhile.
                        let (inner, i) = (inner.clone(), i.clone());
                        tokio::spawn(async move {
                            let grace = inner.config.max_timeout;
                            inner.retire(&i, RestartReason::Memory, grace).await;
                        });
                    }
                }
            }
        }
    }
}
