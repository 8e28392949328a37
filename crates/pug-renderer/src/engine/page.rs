//! One page load in a fresh incognito browser context: setup, policy enforcement on every
//! request, navigation, readiness detection, full-page sizing and capture.
//!
//! Owns: the CDP sequence of a render and the readiness rules (research/renderer.md §3):
//! Grafana's binding protocol first, then scenes query counting plus network idle, then legacy
//! `panelsRendered`, then plain network idle. No fixed sleeps: signals are polled every
//! `poll_interval` and must hold for `quiet_period`.
//!
//! Layout: [`readiness`] decides when the page is ready; [`requests`] consumes its request
//! and binding events.
//!
//! Must not: choose the browser, admit requests or enforce deadlines (the engine wraps every call
//! here in the request's deadline and in the browser's death).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::browser::{
    BrowserContextId, SetDownloadBehaviorBehavior, SetDownloadBehaviorParams,
};
use chromiumoxide::cdp::browser_protocol::emulation::{
    SetDeviceMetricsOverrideParams, SetTimezoneOverrideParams, SetUserAgentOverrideParams,
};
use chromiumoxide::cdp::browser_protocol::fetch::{
    self, EventRequestPaused, RequestPattern, RequestStage,
};
use chromiumoxide::cdp::browser_protocol::network::ClearBrowserCacheParams;
use chromiumoxide::cdp::browser_protocol::network::{
    EventLoadingFailed, EventLoadingFinished, EventRequestWillBeSent, SetCookieParams,
};
use chromiumoxide::cdp::browser_protocol::page::{
    AddScriptToEvaluateOnNewDocumentParams, CaptureScreenshotFormat, CaptureScreenshotParams,
    NavigateParams, PrintToPdfParams, RemoveScriptToEvaluateOnNewDocumentParams, ScriptIdentifier,
};
use chromiumoxide::cdp::browser_protocol::storage::{ClearCookiesParams, ClearDataForOriginParams};
use chromiumoxide::cdp::browser_protocol::target::{CreateTargetParams, SetAutoAttachParams};
use chromiumoxide::cdp::js_protocol::runtime::{
    AddBindingParams, EvaluateParams, EventBindingCalled,
};
use chromiumoxide::Page;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use url::Url;

mod readiness;
mod requests;

use self::requests::{enforce_policy, track_network, watch_binding};
use super::browser::Instance;
use super::progress::Progress;
use crate::error::RenderError;
use crate::params::{PageRequest, PdfOptions};
use crate::security::{Scope, UrlPolicy};

/// The binding Grafana's frontend calls when the page is ready (`REPORT_RENDER_COMPLETE`).
const BINDING: &str = "__grafanaImageRendererMessageChannel";

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
    let opened = match browser.new_page(target).await {
        Ok(page) => run_workers_at_once(&page).await.map(|()| page),
        Err(e) => Err(RenderError::Internal(format!("opening a page: {e}"))),
    };
    match opened {
        Ok(page) => Ok(Blank {
            ctx,
            page,
            uses: 0,
            residue: Arc::default(),
        }),
        Err(e) => {
            let _ = browser.dispose_browser_context(ctx).await;
            Err(e)
        }
    }
}

/// Lets the page's workers start as in any browser. chromiumoxide attaches to a page's workers
/// with `waitForDebuggerOnStart`, then for a service worker sends `runIfWaitingForDebugger`
/// and detaches at once; Chromium handles the detach first, and the worker stays paused before
/// its first line, so `navigator.serviceWorker.register()` never settles and such a page runs
/// into its timeout. A running service worker is no hole (its fetches, which the page's request
/// interception never sees, go through the browser's proxy like every connection), but that
/// must hold because it is tested, not because workers happen never to run:
/// `tests/connect_policy.rs` has a page's worker fetch the metadata address.
async fn run_workers_at_once(page: &Page) -> Result<(), RenderError> {
    let attach = SetAutoAttachParams::builder()
        .auto_attach(true)
        .wait_for_debugger_on_start(false)
        .flatten(true)
        .build()
        .map_err(RenderError::Internal)?;
    page.execute(attach)
        .await
        .map_err(cdp("letting workers start"))?;
    Ok(())
}

/// Makes a used page blank again for the next render of the same scope: leaves the document
/// (so no script of it runs any more), then removes cookies, storage of every origin it
/// talked to, the HTTP cache, and the per-render startup scripts. Emulation overrides are
/// not reset here: [`PageSession::open`] sets all of them on every render.
///
/// An error means the page must not be reused (the caller disposes its context).
pub async fn wipe(instance: &Instance, blank: &Blank) -> Result<(), RenderError> {
    let page = &blank.page;
    let t0 = std::time::Instant::now();
    leave_document(page).await?;
    let t1 = std::time::Instant::now();
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
    let t2 = std::time::Instant::now();
    for origin in origins {
        page.execute(ClearDataForOriginParams::new(origin, "all"))
            .await
            .map_err(cdp("clearing storage"))?;
    }
    let t3 = std::time::Instant::now();
    page.execute(ClearBrowserCacheParams::default())
        .await
        .map_err(cdp("clearing the cache"))?;
    let t4 = std::time::Instant::now();
    let cookies = ClearCookiesParams {
        browser_context_id: Some(blank.ctx.clone()),
    };
    instance
        .browser()
        .await
        .execute(cookies)
        .await
        .map_err(cdp("clearing cookies"))?;
    let us = |a: std::time::Instant, b: std::time::Instant| b.duration_since(a).as_micros() as u64;
    tracing::debug!(
        leave_us = us(t0, t1),
        scripts_us = us(t1, t2),
        storage_us = us(t2, t3),
        cache_us = us(t3, t4),
        cookies_us = us(t4, std::time::Instant::now()),
        "wipe phases"
    );
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
