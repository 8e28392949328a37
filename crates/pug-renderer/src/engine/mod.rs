//! The render engine: one warm Chromium, a bounded number of concurrent renders with a bounded
//! wait queue, and a supervisor that replaces Chromium when it crashes, hangs, grows too large
//! or has served its quota of renders.
//!
//! Owns: admission (slots + queue → 429, shared per tenant: [`admission`]), deadlines (→ 408), the current [`browser::Instance`]
//! and its replacement, the per-render incognito context and its disposal, and the engine
//! metrics. A render whose Chromium dies fails at once with [`RenderError::BrowserFailed`].
//!
//! Must not: parse HTTP or check tokens (that is [`crate::api`]); the URL policy comes from
//! [`crate::security`] and is applied to every request the page makes.
//!
//! Layout: [`browser`] is one Chromium process; [`replace`] decides which one serves and
//! replaces it; [`jobs`] are the kinds of render; [`page`] is one page load; [`progress`] says
//! where a render is.

pub mod admission;
pub mod browser;
mod jobs;
pub mod launch;
pub mod page;
pub mod progress;
pub mod proxy;
mod replace;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::browser::Instance;
pub use self::progress::Progress;
use crate::config::RendererConfig;
use crate::error::{RenderError, RendererError};
use crate::metrics::{Metrics, ModeLabel, PageLabel, ReadinessMode, RenderLabels, RestartReason};
use crate::params::{CsvRequest, Encoding, RenderRequest};
use crate::security::{Scope, UrlPolicy};

/// A finished `/render`.
#[derive(Debug)]
pub struct Rendered {
    /// PNG or PDF bytes.
    pub bytes: Vec<u8>,
    /// Which of the two.
    pub encoding: Encoding,
    /// How readiness was decided.
    pub readiness: ReadinessMode,
}

/// A finished `/render/csv`.
#[derive(Debug)]
pub struct CsvFile {
    /// The file's content.
    pub bytes: Vec<u8>,
    /// A safe basename ending in `.csv`.
    pub file_name: String,
}

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<RendererConfig>,
    metrics: Arc<Metrics>,
    policy: UrlPolicy,
    /// Every connection of Chromium goes through it (the connect-time URL policy).
    proxy: proxy::Proxy,
    /// Slots and queue, shared fairly between tenants.
    admission: Arc<admission::Admission>,
    /// The Chromium new renders go to; `None` until (re)launched.
    current: Mutex<Option<Arc<Instance>>>,
    /// A planned replacement (render limit, memory) is starting its successor.
    replacing: std::sync::atomic::AtomicBool,
    /// Sequence number of instances.
    next_id: AtomicU64,
    /// Teardowns of retired instances, awaited at shutdown.
    closing: std::sync::Mutex<JoinSet<()>>,
    /// Stops the supervisor.
    shutdown: CancellationToken,
}

/// Decrements a counter (and its gauge) when dropped.
struct Counted<'a> {
    counter: Option<&'a AtomicUsize>,
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counter {
            c.fetch_sub(1, Ordering::AcqRel);
        }
        self.gauge.dec();
    }
}

impl Engine {
    /// Starts Chromium (so a missing browser fails at start, not at the first render) and the
    /// supervisor.
    pub async fn start(
        config: Arc<RendererConfig>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RendererError> {
        let proxy = proxy::Proxy::start(Arc::new(proxy::SystemResolver))
            .await
            .map_err(|e| RendererError::Launch {
                path: config.chrome_path.clone(),
                reason: format!("cannot start the browser's proxy: {e}"),
            })?;
        let first = Instance::launch(0, &config, proxy.addr).await?;
        let inner = Arc::new(Inner {
            policy: UrlPolicy::new(&config.allowed_hosts),
            admission: admission::Admission::new(config.max_concurrency, config.max_queue),
            proxy,
            current: Mutex::new(Some(first)),
            replacing: std::sync::atomic::AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            closing: std::sync::Mutex::new(JoinSet::new()),
            shutdown: CancellationToken::new(),
            config,
            metrics,
        });
        tokio::spawn(replace::supervise(inner.clone()));
        Ok(Self { inner })
    }

    /// The URL policy in force (the API checks the render URL before queueing).
    pub fn policy(&self) -> &UrlPolicy {
        &self.inner.policy
    }

    /// The request lines of the browser's last connections refused at connect time.
    pub fn proxy_refusals(&self) -> Vec<String> {
        self.inner
            .proxy
            .refusals
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Process id of the current Chromium, if one is running (for tests and diagnostics).
    pub async fn browser_pid(&self) -> Option<u32> {
        self.inner.current.lock().await.as_ref().map(|i| i.pid)
    }

    /// Renders a PNG or PDF.
    pub async fn render(&self, req: RenderRequest, scope: Scope) -> Result<Rendered, RenderError> {
        let inner = self.inner.clone();
        let encoding = req.encoding.as_str();
        // Spawned, so a client that hangs up does not cut the render short of its cleanup.
        let job = tokio::spawn(async move {
            let started = Instant::now();
            let deadline = started + req.page.timeout;
            let res = inner.render_png_pdf(req, scope, deadline).await;
            inner.observe(encoding, started, &res.as_ref().map(|r| r.readiness));
            res
        });
        job.await
            .unwrap_or_else(|e| Err(RenderError::Internal(format!("render task failed: {e}"))))
    }

    /// Loads a page that downloads a CSV file and returns the file.
    pub async fn render_csv(&self, req: CsvRequest, scope: Scope) -> Result<CsvFile, RenderError> {
        let inner = self.inner.clone();
        let job = tokio::spawn(async move {
            let started = Instant::now();
            let deadline = started + req.page.timeout;
            let res = inner.render_csv(req, scope, deadline).await;
            inner.observe(
                "csv",
                started,
                &res.as_ref().map(|_| ReadinessMode::NetworkIdle),
            );
            res
        });
        job.await
            .unwrap_or_else(|e| Err(RenderError::Internal(format!("render task failed: {e}"))))
    }

    /// Stops the supervisor and Chromium, waiting at most `grace` for running renders.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        // A replacement starting its successor finishes first (bounded by its launch
        // attempts), so the successor is either current or closed below, never left running.
        while self.inner.replacing.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let current = self.inner.current.lock().await.take();
        if let Some(instance) = current {
            instance.close(grace).await;
        }
        let mut closing = std::mem::take(
            &mut *self
                .inner
                .closing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        while closing.join_next().await.is_some() {}
    }
}

impl Inner {
    /// Waits for a render slot of `key`'s share: at once if one is free, else in the queue if
    /// it (and `key`'s share of it) has room (429 otherwise), until the deadline (408).
    async fn admit(
        &self,
        key: &str,
        deadline: Instant,
        timeout: Duration,
        progress: &Progress,
    ) -> Result<admission::Slot, RenderError> {
        let mut queued = None;
        let res = self
            .admission
            .admit(key, deadline, || {
                self.metrics.queued.inc();
                queued = Some(Counted {
                    counter: None,
                    gauge: &self.metrics.queued,
                });
            })
            .await;
        drop(queued);
        res.map_err(|e| match e {
            admission::NotAdmitted::Full => RenderError::Busy,
            admission::NotAdmitted::Timeout => RenderError::Timeout {
                after: timeout,
                stage: progress.get(),
            },
        })
    }

    fn observe(
        &self,
        encoding: &'static str,
        started: Instant,
        res: &Result<ReadinessMode, &RenderError>,
    ) {
        let result = match res {
            Ok(mode) => {
                self.metrics
                    .readiness
                    .get_or_create(&ModeLabel { mode: *mode })
                    .inc();
                "success"
            }
            Err(e) => e.result_label(),
        };
        self.metrics
            .render_duration
            .get_or_create(&RenderLabels { encoding, result })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Runs `work` on a blank page of the current Chromium — in a fresh incognito context, or
    /// (`reuse`, with `page_reuse` > 1) a wiped page that served `scope` before —
    /// bounded by the deadline and by the browser's death. The context is disposed after the
    /// result is returned (the slot stays taken until then).
    async fn with_context<T, F, Fut>(
        self: &Arc<Self>,
        deadline: Instant,
        timeout: Duration,
        scope: &Scope,
        key: &str,
        reuse: bool,
        work: F,
    ) -> Result<T, RenderError>
    where
        F: FnOnce(Arc<Instance>, page::Blank, Progress) -> Fut,
        Fut: std::future::Future<Output = Result<T, RenderError>>,
    {
        let progress = Progress::new();
        let late = |progress: &Progress| RenderError::Timeout {
            after: timeout,
            stage: progress.get(),
        };
        let permit = self.admit(key, deadline, timeout, &progress).await?;
        self.metrics.in_flight.inc();
        let _running = Counted {
            counter: None,
            gauge: &self.metrics.in_flight,
        };
        progress.set("waiting for the browser to start");
        let (instance, in_use) = tokio::time::timeout_at(deadline, self.begin_render())
            .await
            .map_err(|_| late(&progress))??;
        progress.set(format!("opening a page in browser {}", instance.id));

        let blank = tokio::select! {
            blank = instance.take_blank(scope) => match blank {
                Ok(blank) => blank,
                // The page may have failed because the browser died under it.
                Err(RenderError::Internal(_)) if instance.is_dead() => {
                    return Err(RenderError::BrowserFailed)
                }
                Err(e) => return Err(e),
            },
            _ = tokio::time::sleep_until(deadline) => return Err(late(&progress)),
            _ = instance.dead.cancelled() => return Err(RenderError::BrowserFailed),
        };
        let page = if blank.uses > 1 { "reused" } else { "fresh" };
        self.metrics.pages.get_or_create(&PageLabel { page }).inc();
        let kept = blank.clone();
        let result = tokio::select! {
            res = work(instance.clone(), blank, progress.clone()) => res,
            _ = tokio::time::sleep_until(deadline) => Err(late(&progress)),
            _ = instance.dead.cancelled() => Err(RenderError::BrowserFailed),
        };
        if let Err(RenderError::Timeout { stage, .. }) = &result {
            tracing::info!(browser = instance.id, %stage, "render timed out");
        }
        if instance.is_dead() {
            // A render that raced the crash may have seen a CDP error instead of the death.
            return match result {
                Err(RenderError::Internal(_)) => Err(RenderError::BrowserFailed),
                other => other,
            };
        }
        // Only a page whose render finished is reused; one cut short by a timeout or error
        // may still be busy, so its context goes.
        let reuse = reuse && result.is_ok() && instance.reusable(kept.uses);
        let inner = self.clone();
        let scope = scope.clone();
        tokio::spawn(async move {
            let mut retired = vec![kept.clone()];
            if reuse {
                let wiped =
                    tokio::time::timeout(Duration::from_secs(5), page::wipe(&instance, &kept))
                        .await;
                match wiped {
                    Ok(Ok(())) => retired = instance.give_back(scope, kept),
                    Ok(Err(e)) => tracing::debug!(error = %e, "wiping a page failed; closing it"),
                    Err(_) => tracing::debug!("wiping a page timed out; closing it"),
                }
            }
            for blank in retired {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    page::dispose_context(&instance, blank.ctx),
                )
                .await;
            }
            drop(in_use);
            drop(permit);
            let quota = inner.config.renders_per_browser;
            if quota > 0 && instance.renders.load(Ordering::Acquire) >= quota {
                let grace = inner.config.max_timeout;
                inner
                    .retire(&instance, RestartReason::RenderLimit, grace)
                    .await;
            }
        });
        result
    }
}
