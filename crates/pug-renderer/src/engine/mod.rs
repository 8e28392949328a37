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
//! Layout: [`browser`] is one Chromium process; [`page`] is one page load.

pub mod admission;
pub mod browser;
pub mod page;
pub mod progress;
pub mod proxy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::browser::{InUse, Instance};
use self::page::{PageSession, Viewport};
pub use self::progress::Progress;
use crate::config::RendererConfig;
use crate::error::{RenderError, RendererError};
use crate::metrics::{
    Metrics, ModeLabel, PageLabel, ReadinessMode, RenderLabels, RestartLabel, RestartReason,
};
use crate::params::{CsvRequest, Encoding, Height, RenderRequest};
use crate::security::{Scope, UrlPolicy};

/// Pings in a row a browser must miss before it is replaced as hung.
const HUNG_AFTER_MISSES: u32 = 2;

/// Launches tried before a render (or a replacement) gives up on starting Chromium. A launch
/// that stalls is cut short by [`browser::LAUNCH_TIMEOUT`] and tried again: a healthy launch
/// takes well under a second, and one stalled start must not cost a render its whole deadline.
const LAUNCH_ATTEMPTS: u32 = 3;

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
        tokio::spawn(supervise(inner.clone()));
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

    /// The running Chromium, launching one if there is none (or the last one died).
    async fn instance(&self) -> Result<Arc<Instance>, RenderError> {
        let mut current = self.current.lock().await;
        self.current_or_launch(&mut current).await
    }

    /// The running Chromium with this render registered on it, both under the lock that
    /// [`Self::retire`] takes: a browser being retired has either counted the render before
    /// its teardown waits for renders to drain, or is no longer handed out. (Registering after
    /// the lock is released let a recycle at the render limit kill a browser a render had just
    /// been given: a 500 under load.)
    async fn begin_render(&self) -> Result<(Arc<Instance>, InUse), RenderError> {
        let mut current = self.current.lock().await;
        let instance = self.current_or_launch(&mut current).await?;
        let in_use = instance.begin();
        Ok((instance, in_use))
    }

    async fn current_or_launch(
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
    async fn launch(&self) -> Result<Arc<Instance>, RendererError> {
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
    async fn retire(&self, instance: &Arc<Instance>, reason: RestartReason, grace: Duration) {
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

    fn spawn_close(&self, instance: Arc<Instance>, grace: Duration) {
        let mut closing = self
            .closing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Reap finished teardowns so the set does not grow.
        while closing.try_join_next().is_some() {}
        closing.spawn(async move { instance.close(grace).await });
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

    async fn render_png_pdf(
        self: &Arc<Self>,
        req: RenderRequest,
        scope: Scope,
        deadline: Instant,
    ) -> Result<Rendered, RenderError> {
        let timeout = req.page.timeout;
        let key = admission::fair_key(&scope, req.page.tenant.as_deref());
        let full_page = req.height == Height::FullPage;
        let viewport = Viewport {
            width: req.width,
            height: match req.height {
                Height::Fixed(h) => h,
                Height::FullPage => (req.width * 3 / 4).max(1),
            },
            scale: req.scale,
        };
        let policy = self.policy.clone();
        let readiness = self.config.readiness.clone();
        let max_full = self.config.viewport.max_full_page_height;
        self.with_context(
            deadline,
            timeout,
            &scope.clone(),
            &key,
            true,
            |instance, blank, progress| async move {
                let t0 = Instant::now();
                let session = PageSession::open(
                    blank,
                    &req.page,
                    viewport,
                    policy,
                    scope,
                    &instance.user_agent,
                    progress.clone(),
                )
                .await?;
                let t1 = Instant::now();
                session.navigate(&req.page.url).await?;
                let t2 = Instant::now();
                let mode = session.wait_ready(&readiness, true).await?;
                if full_page && req.encoding == Encoding::Png {
                    progress.set("sizing the page to its content");
                    session
                        .fit_to_content(viewport, max_full, &readiness)
                        .await?;
                }
                let t3 = Instant::now();
                progress.set("capturing the page");
                let bytes = match req.encoding {
                    Encoding::Png => session.png().await?,
                    Encoding::Pdf => session.pdf(&req.pdf, req.scale).await?,
                };
                let ms = |a: Instant, b: Instant| b.duration_since(a).as_millis() as u64;
                tracing::debug!(
                    prepare_ms = ms(t0, t1),
                    navigate_ms = ms(t1, t2),
                    ready_ms = ms(t2, t3),
                    capture_ms = ms(t3, Instant::now()),
                    ?mode,
                    "render phases"
                );
                Ok(Rendered {
                    bytes,
                    encoding: req.encoding,
                    readiness: mode,
                })
            },
        )
        .await
    }

    async fn render_csv(
        self: &Arc<Self>,
        req: CsvRequest,
        scope: Scope,
        deadline: Instant,
    ) -> Result<CsvFile, RenderError> {
        let timeout = req.page.timeout;
        let key = admission::fair_key(&scope, req.page.tenant.as_deref());
        let policy = self.policy.clone();
        let vp = &self.config.viewport;
        let viewport = Viewport {
            width: vp.default_width,
            height: vp.default_height,
            scale: 1.0,
        };
        let poll = self.config.readiness.poll_interval;
        // A download directory is a per-context setting: CSV exports never reuse a page.
        self.with_context(
            deadline,
            timeout,
            &scope.clone(),
            &key,
            false,
            |instance, blank, progress| async move {
                let dir = tempfile::Builder::new()
                    .prefix("csv-")
                    .tempdir_in(&instance.scratch)
                    .map_err(|e| {
                        RenderError::Internal(format!("creating a download directory: {e}"))
                    })?;
                if let Some(uid) = instance.uid {
                    // The browser's own user writes the download.
                    std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).map_err(|e| {
                        RenderError::Internal(format!(
                            "handing the download directory to the browser's user: {e}"
                        ))
                    })?;
                }
                page::allow_downloads(&instance, &blank.ctx, dir.path()).await?;
                let session = PageSession::open(
                    blank,
                    &req.page,
                    viewport,
                    policy,
                    scope,
                    &instance.user_agent,
                    progress.clone(),
                )
                .await?;
                session.navigate(&req.page.url).await?;
                progress.set("waiting for the CSV download");
                let (downloaded, bytes) = page::wait_for_csv(dir.path(), poll).await?;
                let file_name = req
                    .file_name
                    .or_else(|| crate::security::safe_csv_file_name(&downloaded))
                    .unwrap_or_else(|| "data.csv".to_owned());
                Ok(CsvFile { bytes, file_name })
            },
        )
        .await
    }
}

/// Replaces Chromium when it dies (at once), stops answering, or grows past the memory limit.
async fn supervise(inner: Arc<Inner>) {
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
