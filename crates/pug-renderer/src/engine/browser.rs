//! One Chromium process: launch, liveness, memory, and a teardown that leaves nothing behind.
//!
//! Owns: the process, its CDP connection (the chromiumoxide handler task), its throw-away
//! profile directory, and the list of its descendant processes.
//!
//! Must not: decide when to restart (that is [`super::Engine`]) or know about requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chromiumoxide::browser::BrowserConfig;
use chromiumoxide::Browser;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, Notify, RwLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::launch::launcher;
pub use super::launch::{browser_uid, launch_script, DEFAULT_BROWSER_UID};
use super::page::{self, Blank};
use crate::config::RendererConfig;
use crate::error::{RenderError, RendererError};
use crate::security::Scope;

/// Flags every Chromium of pug gets, whatever `RENDERING_ARGS` says.
const BASE_ARGS: &[&str] = &[
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-dev-shm-usage",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-hang-monitor",
    "--disable-client-side-phishing-detection",
    // SpareRendererForSitePerProcess: after every navigation Chromium starts a spare renderer
    // process for the next one, in that context; with a context per render it is never used
    // (bench/renderer counted 3-4 renderer processes started per render). BackForwardCache:
    // a left page would stay alive in memory for a back navigation that never comes.
    "--disable-features=Translate,MediaRouter,OptimizationHints,SpareRendererForSitePerProcess,BackForwardCache",
    // Frames of another site stay in the page's renderer process. With site isolation, such a
    // frame gets a process and a CDP session of its own, which a page's request interception
    // does not cover: its requests would skip the URL policy (cloud-metadata addresses
    // included), and its document's end is never reported to the page, which then never
    // looks idle (every render with a cross-site iframe ran into its timeout). Site isolation
    // guards sites from each other inside one browser; here every render has its own context
    // and all its sites are one tenant's.
    "--disable-site-isolation-trials",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--force-color-profile=srgb",
    "--font-render-hinting=none",
];

/// A running Chromium.
pub struct Instance {
    /// Sequence number, for logs.
    pub id: u64,
    /// Process id of the browser process (its children are found through `/proc`).
    pub pid: u32,
    /// The CDP client. A read lock per CDP call on the browser target; the write lock is
    /// only taken to close the browser, after the in-flight renders have drained.
    browser: RwLock<Browser>,
    /// The browser's user agent, with `HeadlessChrome` replaced (some sites serve headless
    /// browsers differently); reused when a request overrides `Accept-Language`.
    pub user_agent: String,
    /// Cancelled when the CDP connection ends: the process crashed, was killed, or closed.
    pub dead: CancellationToken,
    /// Renders started on this instance (for `renders_per_browser`).
    pub renders: AtomicU64,
    /// Renders running on this instance now; teardown waits for zero.
    in_flight: AtomicUsize,
    /// Woken when `in_flight` drops.
    drained: Notify,
    /// Profile directory, removed after the process is gone.
    profile: std::sync::Mutex<Option<tempfile::TempDir>>,
    /// Where download directories of CSV renders are created.
    pub scratch: PathBuf,
    /// The user the browser runs as, when not pug's (pug is root): it owns its downloads.
    pub uid: Option<u32>,
    /// Blank pages prepared ahead of time by a background task, so a render does not wait for
    /// a page to open. Each is a fresh context that nothing has been loaded into.
    spares: tokio::sync::Mutex<mpsc::Receiver<Blank>>,
    /// Wiped pages waiting for the next render of their scope (`page_reuse` > 1), oldest
    /// first, with the time each came back.
    warm: std::sync::Mutex<Vec<(Scope, Blank, Instant)>>,
    /// At most this many renders per page (1: a fresh context for every render).
    page_reuse: u32,
    /// At most this many wiped pages are kept (each holds a renderer process).
    max_warm: usize,
}

/// How long one start of Chromium may take to answer over CDP before it is killed (and
/// tried again by the engine). A start takes well under a second, a few on a loaded 2-core
/// machine.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A wiped page unused this long is closed (its renderer process is memory nobody uses).
const WARM_IDLE: Duration = Duration::from_secs(60);

/// Marks one render as running on an [`Instance`] until dropped.
pub struct InUse(Arc<Instance>);

impl Drop for InUse {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl std::ops::Deref for InUse {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        &self.0
    }
}

impl Instance {
    /// Starts Chromium with a fresh profile and connects to it.
    /// Every connection it makes goes through `proxy` ([`super::proxy`]).
    pub async fn launch(
        id: u64,
        config: &RendererConfig,
        proxy: std::net::SocketAddr,
    ) -> Result<Arc<Self>, RendererError> {
        let launch_err = |reason: String| RendererError::Launch {
            path: config.chrome_path.clone(),
            reason,
        };
        let mut tmp = tempfile::Builder::new();
        tmp.prefix("pug-renderer-");
        let profile = match &config.temp_dir {
            Some(dir) => tmp.tempdir_in(dir),
            None => tmp.tempdir(),
        }
        .map_err(|e| launch_err(format!("cannot create a profile directory: {e}")))?;
        let scratch = profile.path().join("downloads");
        std::fs::create_dir_all(&scratch)
            .map_err(|e| launch_err(format!("cannot create a download directory: {e}")))?;

        let uid = browser_uid(nix::unistd::geteuid().is_root(), config.browser_uid);
        let executable = launcher(
            profile.path(),
            &config.chrome_path,
            &config.browser_timezone,
            uid,
        )
        .map_err(|e| launch_err(format!("cannot prepare the launch: {e}")))?;
        let mut builder = BrowserConfig::builder()
            .chrome_executable(executable)
            .user_data_dir(profile.path().join("profile"))
            .disable_default_args()
            .viewport(None)
            .launch_timeout(LAUNCH_TIMEOUT)
            .request_timeout(config.max_timeout + Duration::from_secs(5));
        // Everything through pug's proxy, loopback included (Chromium bypasses it by default).
        let proxy_server = format!("http://{proxy}");
        builder = builder
            .arg(("proxy-server", proxy_server.as_str()))
            .arg(("proxy-bypass-list", "<-loopback>"));
        // chromiumoxide adds the dashes itself and keys flags by name.
        let flags = BASE_ARGS.iter().copied();
        for flag in flags.chain(config.chrome_args.iter().map(String::as_str)) {
            let flag = flag.trim_start_matches('-');
            builder = match flag.split_once('=') {
                Some((key, value)) => builder.arg((key, value)),
                None => builder.arg(flag),
            };
        }
        if !config.ignore_https_errors {
            builder = builder.respect_https_errors();
        }
        let browser_config = builder.build().map_err(launch_err)?;
        let (mut browser, mut handler) = Browser::launch(browser_config)
            .await
            .map_err(|e| launch_err(e.to_string()))?;

        let child = browser
            .get_mut_child()
            .ok_or_else(|| launch_err("no child process".into()))?;
        let pid = child.as_mut_inner().id().unwrap_or_default();
        // Chromium's stderr is a pipe: drain it, or a chatty browser blocks once it is full.
        if let Some(stderr) = child.stderr.take() {
            let stderr = stderr.into_inner();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::trace!(target: "pug_renderer::chromium", "{line}");
                }
            });
        }

        let dead = CancellationToken::new();
        let dead_on_exit = dead.clone();
        tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                match event {
                    Ok(()) => {}
                    // Messages this client does not know (newer Chromium) are harmless.
                    Err(chromiumoxide::error::CdpError::InvalidMessage(..)) => {}
                    Err(err) => {
                        tracing::debug!(error = %err, "CDP connection ended");
                        break;
                    }
                }
            }
            // Mark the instance dead first, then drop the handler, which fails every pending
            // command at once: a render that sees its command fail can then always tell that
            // the browser died (and say so) rather than report an internal error.
            dead_on_exit.cancel();
            drop(handler);
        });

        let user_agent = match tokio::time::timeout(LAUNCH_TIMEOUT, browser.version()).await {
            Ok(Ok(v)) => v.user_agent.replace("HeadlessChrome", "Chrome"),
            Ok(Err(e)) => {
                let _ = browser.kill().await;
                return Err(launch_err(format!("no answer over CDP: {e}")));
            }
            Err(_) => {
                let _ = browser.kill().await;
                return Err(launch_err(format!(
                    "no answer over CDP within {LAUNCH_TIMEOUT:?}"
                )));
            }
        };
        tracing::info!(id, pid, browser = %config.chrome_path.display(), "Chromium started");
        let (spare_tx, spare_rx) = mpsc::channel(config.spare_pages.max(1));
        let instance = Arc::new(Self {
            id,
            pid,
            browser: RwLock::new(browser),
            user_agent,
            dead,
            renders: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            profile: std::sync::Mutex::new(Some(profile)),
            scratch,
            uid,
            spares: tokio::sync::Mutex::new(spare_rx),
            warm: std::sync::Mutex::new(Vec::new()),
            page_reuse: config.page_reuse.max(1),
            max_warm: config.max_concurrency.max(1),
        });
        if config.spare_pages > 0 {
            tokio::spawn(prepare_spares(Arc::downgrade(&instance), spare_tx));
        }
        Ok(instance)
    }

    /// A blank page for a render of `scope`: a wiped page that served this scope before if
    /// there is one, else a prepared fresh one, else a new one.
    pub async fn take_blank(&self, scope: &Scope) -> Result<Blank, RenderError> {
        let warm = {
            let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
            warm.iter()
                .rposition(|(s, _, _)| s == scope)
                .map(|i| warm.remove(i).1)
        };
        let mut blank = match warm {
            Some(blank) => blank,
            None => match self.spares.lock().await.try_recv() {
                Ok(blank) => blank,
                Err(_) => page::create_blank(self).await?,
            },
        };
        blank.uses += 1;
        Ok(blank)
    }

    /// Whether a page that has served `uses` renders may serve another.
    pub fn reusable(&self, uses: u32) -> bool {
        uses < self.page_reuse
    }

    /// Keeps a wiped page for the next render of `scope`. Returns the contexts to dispose:
    /// the oldest pages beyond the limit and pages idle for too long.
    pub fn give_back(&self, scope: Scope, blank: Blank) -> Vec<Blank> {
        let now = Instant::now();
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        warm.push((scope, blank, now));
        let mut retired = Vec::new();
        while warm.len() > self.max_warm {
            retired.push(warm.remove(0).1);
        }
        retired.extend(idle(&mut warm, now));
        retired
    }

    /// Takes out the wiped pages nobody has used for a while (to dispose).
    pub fn take_idle(&self) -> Vec<Blank> {
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        idle(&mut warm, Instant::now())
    }

    /// Registers one render on this instance.
    pub fn begin(self: &Arc<Self>) -> InUse {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.renders.fetch_add(1, Ordering::AcqRel);
        InUse(self.clone())
    }

    /// The CDP client, for a command on the browser target.
    pub async fn browser(&self) -> tokio::sync::RwLockReadGuard<'_, Browser> {
        self.browser.read().await
    }

    /// Whether the connection to Chromium is gone.
    pub fn is_dead(&self) -> bool {
        self.dead.is_cancelled()
    }

    /// Asks the browser for its version; `false` if it does not answer within `within`.
    pub async fn ping(&self, within: Duration) -> bool {
        let browser = self.browser.read().await;
        matches!(
            tokio::time::timeout(within, browser.version()).await,
            Ok(Ok(_))
        )
    }

    /// Resident memory of the browser and every process below it, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let page = procfs::page_size();
        let mut pids = descendants(self.pid);
        pids.push(self.pid as i32);
        pids.iter()
            .filter_map(|pid| procfs::process::Process::new(*pid).ok())
            .filter_map(|p| p.stat().ok())
            .map(|s| s.rss * page)
            .sum()
    }

    /// Waits (at most `grace`) for the in-flight renders, then stops Chromium and every process
    /// it started, and removes the profile directory.
    pub async fn close(&self, grace: Duration) {
        let wait_drained = async {
            loop {
                let notified = self.drained.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let drained = tokio::time::timeout(grace, wait_drained).await.is_ok();

        // Collected before the browser exits: once it is gone its children are re-parented.
        let children = descendants(self.pid);
        if !drained || self.is_dead() {
            // Renders still running (or a hung browser): kill first, so their CDP calls fail
            // and release the client, instead of waiting for a browser that will not answer.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut browser = self.browser.write().await;
        if !self.is_dead() {
            let _ = tokio::time::timeout(Duration::from_secs(2), browser.close()).await;
        }
        let _ = browser.kill().await; // SIGKILL if still running, then reap
        for pid in children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.dead.cancel();
        drop(browser);
        let profile = self.profile.lock().ok().and_then(|mut p| p.take());
        if let Some(profile) = profile {
            let path = profile.path().to_owned();
            // Chromium's last children may still be writing for a moment after SIGKILL.
            let removed = tokio::task::spawn_blocking(move || {
                for _ in 0..20 {
                    if std::fs::remove_dir_all(&path).is_ok() || !path.exists() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                false
            })
            .await
            .unwrap_or(false);
            if !removed {
                tracing::warn!(id = self.id, path = %profile.path().display(), "profile directory not removed");
            }
            // TempDir's own drop would retry once more; the directory is gone either way.
            let _ = profile.close();
        }
        tracing::info!(id = self.id, pid = self.pid, "Chromium stopped");
    }
}

fn idle(warm: &mut Vec<(Scope, Blank, Instant)>, now: Instant) -> Vec<Blank> {
    let mut out = Vec::new();
    while warm
        .first()
        .is_some_and(|(_, _, at)| now.duration_since(*at) > WARM_IDLE)
    {
        out.push(warm.remove(0).1);
    }
    out
}

/// Keeps the spare channel full; ends when the instance is gone or its browser fails.
async fn prepare_spares(instance: std::sync::Weak<Instance>, spares: mpsc::Sender<Blank>) {
    loop {
        // Wait for room first, so no page is opened that nobody will take.
        let Ok(slot) = spares.reserve().await else {
            return;
        };
        let Some(strong) = instance.upgrade() else {
            return;
        };
        if strong.is_dead() {
            return;
        }
        match page::create_blank(&strong).await {
            Ok(blank) => slot.send(blank),
            Err(e) => {
                tracing::debug!(error = %e, "preparing a spare page failed");
                return;
            }
        }
    }
}

/// Every process whose parent chain leads to `root`, read from `/proc`.
pub fn descendants(root: u32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let parents: Vec<(i32, i32)> = all
        .filter_map(Result::ok)
        .filter_map(|p| p.stat().ok().map(|s| (s.pid, s.ppid)))
        .collect();
    let mut found = vec![root as i32];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for (pid, ppid) in &parents {
            if *ppid == parent && !found.contains(pid) {
                found.push(*pid);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}
