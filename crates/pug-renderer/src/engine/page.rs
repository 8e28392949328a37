//! One page load in a fresh incognito browser context: setup, policy enforcement on every
//! request, navigation, readiness detection, full-page sizing and capture.
//!
//! Owns: the CDP sequence of a render and the readiness rules (research/renderer.md §3):
//! Grafana's binding protocol first, then scenes query counting plus network idle, then legacy
//! `panelsRendered`, then plain network idle. No fixed sleeps: signals are polled every
//! `poll_interval` and must hold for `quiet_period`.
//!
//! Must not: choose the browser, admit requests or enforce deadlines (the engine wraps every call
//! here in the request's deadline and in the browser's death).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::browser::{
    BrowserContextId, SetDownloadBehaviorBehavior, SetDownloadBehaviorParams,
};
use chromiumoxide::cdp::browser_protocol::emulation::{
    SetDeviceMetricsOverrideParams, SetTimezoneOverrideParams, SetUserAgentOverrideParams,
};
use chromiumoxide::cdp::browser_protocol::fetch::{
    self, ContinueRequestParams, EventRequestPaused, FailRequestParams, HeaderEntry,
    RequestPattern, RequestStage,
};
use chromiumoxide::cdp::browser_protocol::network::ClearBrowserCacheParams;
use chromiumoxide::cdp::browser_protocol::network::{
    ErrorReason, EventLoadingFailed, EventLoadingFinished, EventRequestWillBeSent, ResourceType,
    SetCookieParams,
};
use chromiumoxide::cdp::browser_protocol::page::{
    AddScriptToEvaluateOnNewDocumentParams, CaptureScreenshotFormat, CaptureScreenshotParams,
    NavigateParams, PrintToPdfParams, RemoveScriptToEvaluateOnNewDocumentParams, ScriptIdentifier,
};
use chromiumoxide::cdp::browser_protocol::storage::{ClearCookiesParams, ClearDataForOriginParams};
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::cdp::js_protocol::runtime::{
    AddBindingParams, EvaluateParams, EventBindingCalled,
};
use chromiumoxide::Page;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use url::Url;

use super::browser::Instance;
use super::progress::{self, Progress};
use crate::config::ReadinessConfig;
use crate::error::RenderError;
use crate::metrics::ReadinessMode;
use crate::params::{PageRequest, PdfOptions};
use crate::security::{Scope, UrlPolicy};

/// The binding Grafana's frontend calls when the page is ready (`REPORT_RENDER_COMPLETE`).
const BINDING: &str = "__grafanaImageRendererMessageChannel";

/// One poll of the page's own readiness signals.
const OBSERVE_JS: &str = r#"(() => {
  const w = window;
  return {
    complete: document.readyState === 'complete',
    binding: w.__grafanaRenderBindingSupported === true,
    scenes: !!w.__grafanaSceneContext,
    running: typeof w.__grafanaRunningQueryCount === 'number' ? w.__grafanaRunningQueryCount : 0,
    rendered: typeof w.panelsRendered === 'number' ? w.panelsRendered : 0,
    panels: document.querySelectorAll('.panel-solo, [class$="panel-container"]').length,
  };
})()"#;

/// The element that scrolls: Grafana's `#page-scrollbar` (≥ 11.1), else the document.
const SCROLLER_JS: &str =
    "(document.querySelector('#page-scrollbar') || document.scrollingElement || document.documentElement)";

/// State filled by the event tasks and read by the readiness loop.
#[derive(Default)]
struct Shared {
    /// Requests started and not yet finished or failed (EventSource/WebSocket excluded):
    /// request id → URL (the URL names it when a render times out waiting for it).
    in_flight: Mutex<HashMap<String, String>>,
    /// Last time a request started or ended.
    last_network: Mutex<Option<Instant>>,
    /// Grafana reported `REPORT_RENDER_COMPLETE`.
    binding_done: AtomicBool,
    /// Why a main-frame navigation was blocked, if one was.
    refused: Mutex<Option<String>>,
    /// Wakes the readiness loop early (binding called, navigation refused).
    changed: Notify,
    /// Where the origins the page talks to are recorded (for [`wipe`]).
    residue: Arc<Mutex<Residue>>,
}

/// What [`OBSERVE_JS`] returns.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Observation {
    complete: bool,
    binding: bool,
    scenes: bool,
    running: f64,
    rendered: f64,
    panels: u32,
}

impl Observation {
    /// What the page itself says it still waits for, if anything (for a timeout's message).
    fn not_ready(&self, use_binding: bool) -> Option<String> {
        if use_binding && self.binding {
            Some("Grafana has not reported the render complete".to_owned())
        } else if !self.complete {
            Some("the document has not finished loading".to_owned())
        } else if self.scenes && self.running > 0.0 {
            Some(format!("Grafana reports {} queries running", self.running))
        } else if !self.scenes && self.panels > 0 && self.rendered < f64::from(self.panels) {
            Some(format!(
                "{} of {} panels rendered",
                self.rendered, self.panels
            ))
        } else {
            None
        }
    }
}

/// A page in its own browser context, with its event tasks.
pub struct PageSession {
    page: Page,
    shared: Arc<Shared>,
    /// Where the render is, for the message of a timeout.
    progress: Progress,
    /// Event consumers; aborted when the session is dropped.
    _tasks: JoinSet<()>,
}

/// Viewport of a render, in CSS pixels.
#[derive(Debug, Clone, Copy)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    pub scale: f64,
}

fn cdp(what: &str) -> impl Fn(chromiumoxide::error::CdpError) -> RenderError + '_ {
    move |e| RenderError::Internal(format!("{what}: {e}"))
}

/// An incognito context holding one page at `about:blank`: what every render starts from.
/// Prepared ahead of time (see [`Instance`]'s spare pages), since opening a page costs more
/// than most renders.
///
/// With `page_reuse` > 1 a page serves several renders of one scope: between two renders it is
/// wiped ([`wipe`]) of everything a render leaves behind, so only the renderer process and the
/// context's shell are reused (they are what costs: ~0.3 s of CPU per context on a 2-core VM).
#[derive(Clone)]
pub struct Blank {
    /// The context (own cookies, cache, storage); disposed when the page retires.
    pub ctx: BrowserContextId,
    /// Its page, at `about:blank`.
    pub page: Page,
    /// Renders this page has started.
    pub uses: u32,
    /// What the renders left behind, for [`wipe`].
    pub residue: Arc<Mutex<Residue>>,
}

/// What renders leave in a page that [`wipe`] must remove.
#[derive(Default)]
pub struct Residue {
    /// Request interception and Grafana's binding are installed (they survive navigations).
    prepared: bool,
    /// Origins the page has sent requests to (their storage is cleared).
    origins: HashSet<String>,
    /// Scripts added to run in every new document.
    scripts: Vec<ScriptIdentifier>,
}

/// Creates a context and a blank page in it.
pub async fn create_blank(instance: &Instance) -> Result<Blank, RenderError> {
    let browser = instance.browser().await;
    let ctx = browser
        .create_browser_context(Default::default())
        .await
        .map_err(cdp("creating a browser context"))?;
    let target = CreateTargetParams::builder()
        .url("about:blank")
        .browser_context_id(ctx.clone())
        .build()
        .map_err(RenderError::Internal)?;
    match browser.new_page(target).await {
        Ok(page) => Ok(Blank {
            ctx,
            page,
            uses: 0,
            residue: Arc::default(),
        }),
        Err(e) => {
            let _ = browser.dispose_browser_context(ctx).await;
            Err(RenderError::Internal(format!("opening a page: {e}")))
        }
    }
}

/// Makes a used page blank again for the next render of the same scope: leaves the document
/// (so no script of it runs any more), then removes cookies, storage of every origin it
/// talked to, the HTTP cache, and the per-render startup scripts. Emulation overrides are
/// not reset here: [`PageSession::open`] sets all of them on every render.
///
/// An error means the page must not be reused (the caller disposes its context).
pub async fn wipe(instance: &Instance, blank: &Blank) -> Result<(), RenderError> {
    let page = &blank.page;
    leave_document(page).await?;
    let (origins, scripts) = {
        let mut r = blank
            .residue
            .lock()
            .map_err(|_| RenderError::Internal("poisoned".into()))?;
        (
            std::mem::take(&mut r.origins),
            std::mem::take(&mut r.scripts),
        )
    };
    for id in scripts {
        page.execute(RemoveScriptToEvaluateOnNewDocumentParams::new(id))
            .await
            .map_err(cdp("removing a startup script"))?;
    }
    for origin in origins {
        page.execute(ClearDataForOriginParams::new(origin, "all"))
            .await
            .map_err(cdp("clearing storage"))?;
    }
    page.execute(ClearBrowserCacheParams::default())
        .await
        .map_err(cdp("clearing the cache"))?;
    let cookies = ClearCookiesParams {
        browser_context_id: Some(blank.ctx.clone()),
    };
    instance
        .browser()
        .await
        .execute(cookies)
        .await
        .map_err(cdp("clearing cookies"))?;
    Ok(())
}

/// Replaces the page's document with `about:blank` by a navigation the page itself starts:
/// `about:blank` then inherits the page's origin and stays in its renderer process. A
/// navigation from the browser side (`Page.navigate`) would start a new process for
/// `about:blank` and another one for the next render's URL — most of what reusing saves.
async fn leave_document(page: &Page) -> Result<(), RenderError> {
    let url_is_blank = || async {
        let eval = EvaluateParams::builder()
            .expression("document.URL")
            .return_by_value(true)
            .build()
            .map_err(RenderError::Internal)?;
        // Fails while the document is being swapped: not blank yet.
        Ok::<bool, RenderError>(match page.execute(eval).await {
            Ok(res) => {
                res.result.result.value.as_ref().and_then(|v| v.as_str()) == Some("about:blank")
            }
            Err(_) => false,
        })
    };
    if url_is_blank().await? {
        return Ok(());
    }
    let go = EvaluateParams::builder()
        .expression("location.replace('about:blank')")
        .build()
        .map_err(RenderError::Internal)?;
    page.execute(go).await.map_err(cdp("leaving the page"))?;
    // The caller bounds the wait.
    while !url_is_blank().await? {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Disposes a context and everything in it (pages, cookies, cache, storage).
pub async fn dispose_context(instance: &Instance, ctx: BrowserContextId) {
    let browser = instance.browser().await;
    if let Err(e) = browser.dispose_browser_context(ctx).await {
        tracing::debug!(error = %e, "disposing a browser context failed");
    }
}

impl PageSession {
    /// Takes a blank page, starts enforcing `policy`/`scope` on its requests, and applies
    /// the request's viewport, timezone, language and cookie.
    pub async fn open(
        blank: Blank,
        req: &PageRequest,
        viewport: Viewport,
        policy: UrlPolicy,
        scope: Scope,
        user_agent: &str,
        progress: Progress,
    ) -> Result<Self, RenderError> {
        progress.set("preparing the page");
        let Blank { page, residue, .. } = blank;
        let shared = Arc::new(Shared {
            residue: residue.clone(),
            ..Shared::default()
        });
        let mut tasks = JoinSet::new();
        let prepared = residue.lock().map(|r| r.prepared).unwrap_or(false);

        // Listeners first, so no event of the navigation is missed.
        let paused = page
            .event_listener::<EventRequestPaused>()
            .await
            .map_err(cdp("listening"))?;
        let started = page
            .event_listener::<EventRequestWillBeSent>()
            .await
            .map_err(cdp("listening"))?;
        let finished = page
            .event_listener::<EventLoadingFinished>()
            .await
            .map_err(cdp("listening"))?;
        let failed = page
            .event_listener::<EventLoadingFailed>()
            .await
            .map_err(cdp("listening"))?;
        let bindings = page
            .event_listener::<EventBindingCalled>()
            .await
            .map_err(cdp("listening"))?;
        // Grafana's X-Access-Token goes to the page's own origin only, as its cookie would.
        let access = req
            .access_token
            .as_ref()
            .map(|t| (req.url.origin().ascii_serialization(), t.0.clone()));
        tasks.spawn(enforce_policy(
            page.clone(),
            paused,
            policy,
            scope,
            access,
            shared.clone(),
        ));
        let main_frame = page.target_id().as_ref().to_owned();
        tasks.spawn(track_network(
            main_frame,
            started,
            finished,
            failed,
            shared.clone(),
        ));
        tasks.spawn(watch_binding(bindings, shared.clone()));

        let metrics = SetDeviceMetricsOverrideParams::new(
            viewport.width as i64,
            viewport.height as i64,
            viewport.scale,
            false,
        );
        // Grafana's readiness observer gives up 5 s before this; make that before our deadline.
        let script = AddScriptToEvaluateOnNewDocumentParams::new(format!(
            "window.__grafanaImageRendererReadinessTimeoutMs = {};",
            req.timeout.as_millis()
        ));
        // Every override is set on every render, so a reused page keeps none of the last one's.
        // An empty timezone id restores the browser's own.
        let timezone = SetTimezoneOverrideParams::new(req.timezone.clone().unwrap_or_default());
        let mut ua = SetUserAgentOverrideParams::new(user_agent.to_owned());
        ua.accept_language = req.accept_language.clone();
        if !prepared {
            let fetch = fetch::EnableParams::builder()
                .pattern(
                    RequestPattern::builder()
                        .url_pattern("*")
                        .request_stage(RequestStage::Request)
                        .build(),
                )
                .build();
            futures::try_join!(
                page.execute(fetch),
                page.execute(AddBindingParams::new(BINDING)),
            )
            .map_err(cdp("preparing the page"))?;
            if let Ok(mut r) = residue.lock() {
                r.prepared = true;
            }
        }
        let (_, added, _) = futures::try_join!(
            page.execute(metrics),
            page.execute(script),
            page.execute(ua),
        )
        .map_err(cdp("preparing the page"))?;
        if let Ok(mut r) = residue.lock() {
            r.scripts.push(added.result.identifier.clone());
        }
        if req.timezone.is_some() || prepared {
            page.execute(timezone)
                .await
                .map_err(|_| match &req.timezone {
                    Some(tz) => RenderError::BadRequest(format!(
                        "timezone {tz:?} is not known to the browser"
                    )),
                    None => RenderError::Internal("resetting the timezone failed".into()),
                })?;
        }
        if let Some(key) = &req.render_key {
            let mut domain = key.domain.clone();
            if domain.contains(':') && !domain.starts_with('[') {
                domain = format!("[{domain}]"); // a bare IPv6 address
            }
            let cookie = SetCookieParams::builder()
                .name("renderKey")
                .value(key.key.clone())
                .domain(domain)
                .path("/")
                .http_only(true)
                .build()
                .map_err(RenderError::Internal)?;
            let ok = page
                .execute(cookie)
                .await
                .map_err(cdp("setting the renderKey cookie"))?;
            let _ = ok;
        }
        Ok(Self {
            page,
            shared,
            progress,
            _tasks: tasks,
        })
    }

    /// Loads `url`; a refused navigation is a 403, any other failure a 500.
    pub async fn navigate(&self, url: &Url) -> Result<(), RenderError> {
        self.progress.set(format!("loading {url}"));
        let nav = self
            .page
            .execute(NavigateParams::new(url.as_str()))
            .await
            .map_err(cdp("navigating"))?;
        if let Some(refused) = self.refused() {
            return Err(RenderError::Forbidden(refused));
        }
        match &nav.result.error_text {
            Some(err) if !err.is_empty() && !nav.result.is_download.unwrap_or(false) => Err(
                RenderError::Internal(format!("loading {url} failed: {err}")),
            ),
            _ => Ok(()),
        }
    }

    fn refused(&self) -> Option<String> {
        self.shared.refused.lock().ok().and_then(|r| r.clone())
    }

    fn network(&self) -> (usize, Option<Instant>) {
        let n = self.shared.in_flight.lock().map(|s| s.len()).unwrap_or(0);
        let last = self.shared.last_network.lock().ok().and_then(|l| *l);
        (n, last)
    }

    /// The URLs of the requests in flight, oldest id first (ids are sequential per page).
    fn pending_urls(&self) -> Vec<String> {
        let Ok(s) = self.shared.in_flight.lock() else {
            return Vec::new();
        };
        let mut pending: Vec<(&String, &String)> = s.iter().collect();
        pending.sort();
        pending.into_iter().map(|(_, url)| url.clone()).collect()
    }

    async fn observe(&self) -> Option<Observation> {
        let eval = EvaluateParams::builder()
            .expression(OBSERVE_JS)
            .return_by_value(true)
            .build()
            .ok()?;
        // Fails while a navigation swaps the document: that poll simply does not count.
        let res = self.page.execute(eval).await.ok()?;
        serde_json::from_value(res.result.result.value?).ok()
    }

    async fn eval_f64(&self, expression: String) -> Result<f64, RenderError> {
        let eval = EvaluateParams::builder()
            .expression(expression)
            .return_by_value(true)
            .build()
            .map_err(RenderError::Internal)?;
        let res = self.page.execute(eval).await.map_err(cdp("evaluating"))?;
        Ok(res
            .result
            .result
            .value
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0))
    }

    /// Waits until the page is ready, by the first signal the page supports.
    ///
    /// `use_binding = false` ignores Grafana's one-shot binding report (it has already fired)
    /// and decides by the polled signals: after a full-page resize, lazily loaded panels are
    /// only visible there.
    pub async fn wait_ready(
        &self,
        cfg: &ReadinessConfig,
        use_binding: bool,
    ) -> Result<ReadinessMode, RenderError> {
        let mut last: Option<Observation> = None;
        let mut stable_since = Instant::now();
        loop {
            if let Some(refused) = self.refused() {
                return Err(RenderError::Forbidden(refused));
            }
            if use_binding && self.shared.binding_done.load(Ordering::Acquire) {
                return Ok(ReadinessMode::Binding);
            }
            let obs = self.observe().await;
            let page = obs.as_ref().and_then(|o| o.not_ready(use_binding));
            self.progress
                .set(progress::readiness(&self.pending_urls(), page.as_deref()));
            let now = Instant::now();
            if obs != last {
                stable_since = now;
                last = obs.clone();
            }
            if let Some(o) = obs
                .as_ref()
                .filter(|o| o.complete && !(use_binding && o.binding))
            {
                let (in_flight, last_net) = self.network();
                let calm_since = last_net.map_or(stable_since, |t| t.max(stable_since));
                if in_flight == 0 && now.duration_since(calm_since) >= cfg.quiet_period {
                    if o.scenes {
                        if o.running <= 0.0 {
                            return Ok(ReadinessMode::Queries);
                        }
                    } else if o.panels > 0 {
                        if o.rendered >= f64::from(o.panels) {
                            return Ok(ReadinessMode::LegacyPanels);
                        }
                    } else {
                        return Ok(ReadinessMode::NetworkIdle);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.poll_interval) => {}
                _ = self.shared.changed.notified() => {}
            }
        }
    }

    /// Waits until no request has been in flight for `quiet`.
    async fn wait_network_quiet(&self, quiet: Duration, poll: Duration) {
        loop {
            let (n, last) = self.network();
            if n == 0 && last.is_none_or(|t| t.elapsed() >= quiet) {
                return;
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Full-page mode: scrolls through the page so lazy panels load, then sizes the viewport
    /// to the content and waits for readiness again. Returns the final height.
    pub async fn fit_to_content(
        &self,
        viewport: Viewport,
        max_height: u32,
        cfg: &ReadinessConfig,
    ) -> Result<u32, RenderError> {
        let scroll_height = self.eval_f64(format!("{SCROLLER_JS}.scrollHeight")).await?;
        let client_height = self
            .eval_f64(format!("{SCROLLER_JS}.clientHeight"))
            .await?
            .max(1.0);
        let steps = (scroll_height / client_height).floor() as u32;
        for step in 1..=steps.min(50) {
            self.eval_f64(format!(
                "{SCROLLER_JS}.scrollTop = {}",
                f64::from(step) * client_height
            ))
            .await?;
            self.wait_network_quiet(cfg.poll_interval * 2, cfg.poll_interval)
                .await;
        }
        self.eval_f64(format!("{SCROLLER_JS}.scrollTop = 0"))
            .await?;

        // Sizing can change the layout (responsive grids), so measure until it settles.
        let mut height = viewport.height;
        for _ in 0..3 {
            let content = self
                .eval_f64(format!(
                    "(() => {{ const d = document.documentElement, s = {SCROLLER_JS}; \
                     let h = Math.max(d.scrollHeight, document.body ? document.body.scrollHeight : 0); \
                     if (s !== document.scrollingElement && s !== d) h += Math.max(0, s.scrollHeight - s.clientHeight); \
                     return Math.ceil(h); }})()"
                ))
                .await?;
            let wanted = (content as u32).clamp(1, max_height);
            if wanted == height {
                break;
            }
            height = wanted;
            self.page
                .execute(SetDeviceMetricsOverrideParams::new(
                    viewport.width as i64,
                    height as i64,
                    viewport.scale,
                    false,
                ))
                .await
                .map_err(cdp("resizing"))?;
            self.wait_ready(cfg, false).await?;
        }
        Ok(height)
    }

    /// A PNG of the viewport.
    pub async fn png(&self) -> Result<Vec<u8>, RenderError> {
        let shot = CaptureScreenshotParams {
            format: Some(CaptureScreenshotFormat::Png),
            from_surface: Some(true),
            capture_beyond_viewport: Some(false),
            // Faster PNG compression: bigger files, much less CPU per render.
            optimize_for_speed: Some(true),
            ..Default::default()
        };
        let res = self.page.execute(shot).await.map_err(cdp("capturing"))?;
        decode(res.result.data.as_ref())
    }

    /// The page printed to PDF.
    pub async fn pdf(&self, opts: &PdfOptions, scale: f64) -> Result<Vec<u8>, RenderError> {
        let print = PrintToPdfParams {
            landscape: Some(opts.landscape),
            print_background: Some(opts.print_background),
            scale: Some((1.0 / scale).clamp(0.1, 2.0)),
            paper_width: Some(opts.paper.0),
            paper_height: Some(opts.paper.1),
            margin_top: Some(0.0),
            margin_bottom: Some(0.0),
            margin_left: Some(0.0),
            margin_right: Some(0.0),
            page_ranges: (!opts.page_ranges.is_empty()).then(|| opts.page_ranges.clone()),
            ..Default::default()
        };
        let res = self
            .page
            .execute(print)
            .await
            .map_err(|e| RenderError::Internal(format!("printing: {e}")))?;
        decode(res.result.data.as_ref())
    }
}

/// Lets the context download into `dir` (CSV export).
pub async fn allow_downloads(
    instance: &Instance,
    ctx: &BrowserContextId,
    dir: &Path,
) -> Result<(), RenderError> {
    let mut params = SetDownloadBehaviorParams::new(SetDownloadBehaviorBehavior::Allow);
    params.browser_context_id = Some(ctx.clone());
    params.download_path = Some(dir.display().to_string());
    let browser = instance.browser().await;
    browser
        .execute(params)
        .await
        .map_err(cdp("enabling downloads"))?;
    Ok(())
}

/// Waits for the first finished `.csv` download in `dir` (Chromium writes `*.crdownload` and
/// renames it when complete); returns its name and content.
pub async fn wait_for_csv(dir: &Path, poll: Duration) -> Result<(String, Vec<u8>), RenderError> {
    loop {
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| RenderError::Internal(format!("reading the download directory: {e}")))?;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".crdownload") {
                continue;
            }
            let bytes = tokio::fs::read(entry.path())
                .await
                .map_err(|e| RenderError::Internal(format!("reading the download: {e}")))?;
            return Ok((name, bytes));
        }
        tokio::time::sleep(poll).await;
    }
}

fn decode(b64: &str) -> Result<Vec<u8>, RenderError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| RenderError::Internal(format!("decoding the browser's output: {e}")))
}

/// Continues or fails every request the page makes: documents (navigations, redirects, frames)
/// against the allow-list and scope, everything else against the always-refused addresses.
async fn enforce_policy(
    page: Page,
    mut paused: chromiumoxide::listeners::EventStream<EventRequestPaused>,
    policy: UrlPolicy,
    scope: Scope,
    access: Option<(String, String)>,
    shared: Arc<Shared>,
) {
    let main_frame = page.target_id().as_ref().to_owned();
    while let Some(ev) = paused.next().await {
        let is_document = ev.resource_type == ResourceType::Document;
        let parsed = Url::parse(&ev.request.url);
        if let Ok(url) = &parsed {
            let origin = url.origin();
            if origin.is_tuple() {
                if let Ok(mut r) = shared.residue.lock() {
                    r.origins.insert(origin.ascii_serialization());
                }
            }
        }
        let verdict = match parsed {
            Err(_) => Err(format!("{:?} is not a valid URL", ev.request.url)),
            Ok(url) if is_document => match policy.check_navigation(&url, &scope) {
                Ok(()) => UrlPolicy::check_resolved(&url).await.map_err(|r| r.0),
                Err(r) => Err(r.0),
            },
            Ok(url) => UrlPolicy::check_subresource(&url).map_err(|r| r.0),
        };
        let page = page.clone();
        let id = ev.request_id.clone();
        match verdict {
            Ok(()) => {
                let mut next = ContinueRequestParams::new(id);
                if let Some((origin, token)) = &access {
                    let same_origin = Url::parse(&ev.request.url)
                        .is_ok_and(|u| u.origin().ascii_serialization() == *origin);
                    if same_origin {
                        next.headers = Some(with_header(
                            ev.request.headers.inner(),
                            "X-Access-Token",
                            token,
                        ));
                    }
                }
                tokio::spawn(async move { page.execute(next).await });
            }
            Err(reason) => {
                tracing::info!(url = %ev.request.url, %reason, "request refused");
                if is_document && ev.frame_id.as_ref() == main_frame {
                    if let Ok(mut r) = shared.refused.lock() {
                        r.get_or_insert(reason);
                    }
                    shared.changed.notify_waiters();
                }
                tokio::spawn(async move {
                    page.execute(FailRequestParams::new(id, ErrorReason::BlockedByClient))
                        .await
                });
            }
        }
    }
}

/// A request's headers (CDP's JSON object) with `name` set to `value`.
fn with_header(headers: &serde_json::Value, name: &str, value: &str) -> Vec<HeaderEntry> {
    let mut out: Vec<HeaderEntry> = headers
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .map(|(k, v)| HeaderEntry::new(k.clone(), v.as_str().unwrap_or_default()))
        .collect();
    out.push(HeaderEntry::new(name, value));
    out
}

/// Counts requests in flight. Left out: EventSource and WebSocket (they never finish);
/// `data:` and `blob:` URLs (no network; the error page Chromium shows in a blocked frame
/// starts `data:` images that never report an end); and the documents of child frames (a frame
/// in a process of its own reports its document's end to its own CDP session, never to this
/// one, and the main document's `readyState` already waits for every frame's load).
async fn track_network(
    main_frame: String,
    mut started: chromiumoxide::listeners::EventStream<EventRequestWillBeSent>,
    mut finished: chromiumoxide::listeners::EventStream<EventLoadingFinished>,
    mut failed: chromiumoxide::listeners::EventStream<EventLoadingFailed>,
    shared: Arc<Shared>,
) {
    let touch = |shared: &Shared| {
        if let Ok(mut l) = shared.last_network.lock() {
            *l = Some(Instant::now());
        }
    };
    loop {
        tokio::select! {
            Some(ev) = started.next() => {
                let streaming = matches!(ev.r#type, Some(ResourceType::EventSource | ResourceType::WebSocket));
                let child_document = ev.r#type == Some(ResourceType::Document)
                    && ev.frame_id.as_ref().is_some_and(|f| f.as_ref() != main_frame);
                let local = ev.request.url.starts_with("data:") || ev.request.url.starts_with("blob:");
                if !streaming && !child_document && !local {
                    if let Ok(mut s) = shared.in_flight.lock() {
                        s.insert(ev.request_id.as_ref().to_owned(), ev.request.url.clone());
                    }
                }
                touch(&shared);
            }
            Some(ev) = finished.next() => {
                if let Ok(mut s) = shared.in_flight.lock() {
                    s.remove(ev.request_id.as_ref());
                }
                touch(&shared);
            }
            Some(ev) = failed.next() => {
                if let Ok(mut s) = shared.in_flight.lock() {
                    s.remove(ev.request_id.as_ref());
                }
                touch(&shared);
            }
            else => break,
        }
    }
}

/// Waits for Grafana's `REPORT_RENDER_COMPLETE` through the binding.
async fn watch_binding(
    mut bindings: chromiumoxide::listeners::EventStream<EventBindingCalled>,
    shared: Arc<Shared>,
) {
    while let Some(ev) = bindings.next().await {
        if ev.name != BINDING {
            continue;
        }
        let msg: serde_json::Value = serde_json::from_str(&ev.payload).unwrap_or_default();
        if msg["type"] == "REPORT_RENDER_COMPLETE" {
            if msg["data"]["success"] != true {
                tracing::warn!(payload = %ev.payload, "Grafana reported an unsuccessful render");
            }
            shared.binding_done.store(true, Ordering::Release);
            shared.changed.notify_waiters();
        }
    }
}
