//! Renderer benchmark: pug's renderer against the two alternatives, in one run, on the same page
//! and the same Chromium binary.
//!
//! - `pug`: `GET /render` on pug's renderer (warm Chromium, fresh incognito context per render,
//!   readiness detection), over HTTP like Grafana calls it.
//! - `fresh`: one new Chromium per render, the reference renderer's model (launch, open a tab,
//!   navigate, wait for `load`, screenshot, quit). It gets *none* of the reference's fixed waits
//!   (1 s prior wait, 3 s first-query give-up), so it is a generous stand-in.
//! - `floor`: an already-open tab of an already-running Chromium: navigate, wait for `load`,
//!   screenshot. No isolation between renders, no readiness logic: the lower bound.
//! - `floor + interception`: the floor with every request of the page paused and continued
//!   over CDP (`Fetch.enable`, as pug's renderer pauses each request to check it against the
//!   URL policy): what that check costs by itself.
//! - `reference v5 model`: one fresh Chromium per render with the reference renderer's fixed
//!   1 s prior wait after `load` (the model issue 17's target names); `fresh` above is the same
//!   without the wait.
//!
//! pug's renderer is measured as it runs by default (sandboxed, as its own user when root, every
//! connection through its proxy) and once with `renderer.no_sandbox` (what the sandbox costs).
//!
//! Page: the grafana-standin's solo panel (`/d-solo/binding/…`), whose chart is drawn right after
//! its query returns. A second pug row uses a page that becomes ready 200 ms after its query.
//!
//! Reported: p50/p95 latency at concurrency 1, throughput at concurrency 4, peak resident memory
//! of Chromium's processes during that mode, and pug's Chromium memory over 1,000 renders.
//! Run it with `bench/renderer/run.sh` (writes `bench/renderer/results.md`).

#[path = "../../testing/grafana-standin/src/render_pages.rs"]
mod render_pages;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromiumoxide::browser::BrowserConfig;
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, CaptureScreenshotParams,
};
use chromiumoxide::{Browser, Page};
use futures::StreamExt;
use pug_renderer::{Renderer, RendererConfig, StaticTokens};

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 500;
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    // As pug's renderer runs it: tabs other than the focused one are not throttled (without
    // these, a screenshot of a background tab can wait for a frame that never comes).
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
];

struct Args {
    chrome: String,
    c1: usize,
    c4: usize,
    fresh: usize,
    long: usize,
    /// Where the table goes.
    results: std::path::PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        // The browser pug picks (Chromium's headless shell before Chromium), unless named.
        chrome: std::env::var("CHROME_BIN").unwrap_or_else(|_| {
            pug_renderer::config::find_browser()
                .expect("no browser: apt-get install chromium-headless-shell (or chromium)")
                .display()
                .to_string()
        }),
        c1: 50,
        c4: 100,
        fresh: 20,
        long: 1000,
        results: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../bench/renderer/results.md"),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--chrome" => a.chrome = v,
            "--c1" => a.c1 = v.parse().expect("--c1 N"),
            "--c4" => a.c4 = v.parse().expect("--c4 N"),
            "--fresh" => a.fresh = v.parse().expect("--fresh N"),
            "--long" => a.long = v.parse().expect("--long N"),
            "--results" => a.results = v.into(),
            other => panic!(
                "unknown flag {other}; flags: --chrome PATH --c1 N --c4 N --fresh N --long N \
                 --results FILE"
            ),
        }
    }
    a
}

/// Samples the resident memory of every process below this one (the Chromiums).
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(children_rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { peak, stop }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

fn children_rss() -> u64 {
    let me = std::process::id();
    let page = procfs::page_size();
    pug_renderer::engine::browser::descendants(me)
        .into_iter()
        .filter_map(|pid| procfs::process::Process::new(pid).ok()?.stat().ok())
        .map(|s| s.rss * page)
        .sum()
}

/// CPU time the whole machine has spent (all processes, user + system), from `/proc/stat`.
fn machine_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    let hz = procfs::ticks_per_second();
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// CPU time this process has spent (pug's renderer for its rows, the page server, the client).
fn own_cpu() -> Duration {
    let hz = procfs::ticks_per_second() as f64;
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| Duration::from_secs_f64((s.utime + s.stime) as f64 / hz))
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    name: String,
    p50: Duration,
    p95: Duration,
    throughput: f64,
    /// Machine CPU time per render at c=4 (Chromium, pug and this program together).
    cpu_per_render: Duration,
    peak_rss: u64,
}

/// Runs `render` n times one after the other, then `m` times with 4 workers.
async fn measure<F, Fut>(name: &str, n: usize, m: usize, render: F) -> Row
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let rss = RssSampler::start();
    render(0).await; // warm-up
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        render(i).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let next = Arc::new(AtomicU64::new(0));
    let cpu = machine_cpu();
    let own = own_cpu();
    let t = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (render, next) = (render.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < m as u64 {
                    render(w).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let throughput = m as f64 / t.elapsed().as_secs_f64();
    let cpu_per_render = machine_cpu().saturating_sub(cpu) / m.max(1) as u32;
    let own_per_render = own_cpu().saturating_sub(own) / m.max(1) as u32;
    let row = Row {
        name: name.to_owned(),
        p50: percentile(&lat, 0.5),
        p95: percentile(&lat, 0.95),
        throughput,
        cpu_per_render,
        peak_rss: rss.finish(),
    };
    eprintln!(
        "{name}: p50 {:?} p95 {:?} {:.1}/s cpu/render {:?} (this process {:?}) peak {} MiB",
        row.p50,
        row.p95,
        row.throughput,
        row.cpu_per_render,
        own_per_render,
        row.peak_rss >> 20
    );
    row
}

async fn launch(chrome: &str, profile: &std::path::Path) -> (Browser, tokio::task::JoinHandle<()>) {
    let mut builder = BrowserConfig::builder()
        .chrome_executable(chrome)
        .disable_default_args()
        .viewport(None)
        .user_data_dir(profile);
    for f in FLAGS {
        builder = builder.arg(f.trim_start_matches('-'));
    }
    let (browser, mut handler) = Browser::launch(builder.build().unwrap())
        .await
        .expect("Chromium starts");
    let task = tokio::spawn(async move { while handler.next().await.is_some() {} });
    (browser, task)
}

async fn screenshot_after_load(page: &Page, url: &str) {
    page.goto(url).await.expect("navigates");
    screenshot(page).await;
}

async fn screenshot(page: &Page) {
    let shot = CaptureScreenshotParams {
        format: Some(CaptureScreenshotFormat::Png),
        ..Default::default()
    };
    page.execute(shot).await.expect("screenshot");
}

/// Pauses every request of `page` at the request stage and continues it unchanged, as pug's
/// renderer does once it has checked the URL; the task runs until aborted.
async fn continue_every_request(page: &Page) -> tokio::task::JoinHandle<()> {
    use chromiumoxide::cdp::browser_protocol::fetch::{
        ContinueRequestParams, EnableParams, EventRequestPaused, RequestPattern, RequestStage,
    };
    let mut paused = page.event_listener::<EventRequestPaused>().await.unwrap();
    let enable = EnableParams::builder()
        .pattern(
            RequestPattern::builder()
                .url_pattern("*")
                .request_stage(RequestStage::Request)
                .build(),
        )
        .build();
    page.execute(enable).await.unwrap();
    let page = page.clone();
    tokio::spawn(async move {
        while let Some(event) = paused.next().await {
            let page = page.clone();
            tokio::spawn(async move {
                let _ = page
                    .execute(ContinueRequestParams::new(event.request_id.clone()))
                    .await;
            });
        }
    })
}

/// The `renderKey` cookie the stand-in's pages require, for the modes that set it themselves.
fn render_key_cookie() -> chromiumoxide::cdp::browser_protocol::network::SetCookieParams {
    chromiumoxide::cdp::browser_protocol::network::SetCookieParams::builder()
        .name("renderKey")
        .value("k")
        .domain("127.0.0.1")
        .path("/")
        .build()
        .unwrap()
}

async fn new_page(browser: &Browser) -> Page {
    // A window of its own, as each of pug's pages has (one per context): a background tab of
    // a shared window is not drawn, and its screenshot can wait forever.
    let target = chromiumoxide::cdp::browser_protocol::target::CreateTargetParams::builder()
        .url("about:blank")
        .new_window(true)
        .build()
        .unwrap();
    let page = browser.new_page(target).await.unwrap();
    page.execute(SetDeviceMetricsOverrideParams::new(
        WIDTH as i64,
        HEIGHT as i64,
        1.0,
        false,
    ))
    .await
    .unwrap();
    page
}

#[tokio::main]
async fn main() {
    // `RUST_LOG=pug_renderer=debug` shows where each render's time goes ("render phases").
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let a = args();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pages: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, render_pages::routes()).await });
    let page_url = format!("http://{pages}/d-solo/binding/bench?delay=0");
    let slow_url = format!("http://{pages}/d-solo/binding/bench?delay=200");
    let tmp = tempfile::tempdir().unwrap();
    // As root pug's browser runs as a user of its own, which must reach its profile in here.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let mut rows = Vec::new();

    // --- floor: one open tab per worker in one running Chromium; then the same with each
    // request paused and continued over CDP.
    rows.push(
        floor_row(
            &a,
            &tmp.path().join("floor"),
            &page_url,
            "floor: open tab, navigate + load + screenshot",
            false,
        )
        .await,
    );
    rows.push(
        floor_row(
            &a,
            &tmp.path().join("floor-fetch"),
            &page_url,
            "floor + request interception (each request paused and continued, as pug checks it)",
            true,
        )
        .await,
    );

    // --- pug's renderer over HTTP: a fresh context per render (the default), then pages
    // reused for 50 renders and wiped between them (`page_reuse = 50`).
    let (pug_rows, rss_start, rss_at) =
        pug_renderer_rows(&a, tmp.path(), &page_url, &slow_url, 1, "").await;
    rows.extend(pug_rows);
    let (reuse_rows, reuse_rss_start, reuse_rss_at) = pug_renderer_rows(
        &a,
        tmp.path(),
        &page_url,
        &slow_url,
        50,
        ", page reused ×50 (wiped between renders)",
    )
    .await;
    rows.extend(reuse_rows);
    let (no_sandbox_rows, _, _) = pug_renderer_rows(
        &a,
        tmp.path(),
        &page_url,
        &slow_url,
        50,
        ", page reused ×50, renderer.no_sandbox (what the sandbox costs)",
    )
    .await;
    rows.extend(no_sandbox_rows);

    // --- one fresh Chromium per render: without waits, then with the reference's 1 s prior wait.
    for (name, prior_wait) in [
        ("one fresh Chromium per render, no waits", Duration::ZERO),
        (
            "reference v5 model: fresh Chromium per render + its 1 s prior wait",
            Duration::from_secs(1),
        ),
    ] {
        let chrome = a.chrome.clone();
        let root = tmp.path().to_owned();
        let url = page_url.clone();
        let counter = Arc::new(AtomicU64::new(0));
        rows.push(
            measure(name, a.fresh, a.fresh, move |_| {
                let (chrome, root, url, counter) =
                    (chrome.clone(), root.clone(), url.clone(), counter.clone());
                async move {
                    let dir =
                        root.join(format!("fresh-{}", counter.fetch_add(1, Ordering::Relaxed)));
                    let (mut browser, task) = launch(&chrome, &dir).await;
                    let page = new_page(&browser).await;
                    page.execute(render_key_cookie()).await.unwrap();
                    page.goto(url.as_str()).await.expect("navigates");
                    tokio::time::sleep(prior_wait).await;
                    screenshot(&page).await;
                    let _ = browser.close().await;
                    let _ = browser.wait().await;
                    task.abort();
                    let _ = std::fs::remove_dir_all(&dir);
                }
            })
            .await,
        );
    }

    // --- the table.
    let floor = &rows[0];
    let fresh = rows.last().unwrap();
    let default_pug = rows
        .iter()
        .find(|r| r.name == "pug renderer, page reused ×50 (wiped between renders)")
        .expect("the default row");
    let targets = format!(
        "\nIssue 17's targets, pug as it runs by default (page reused ×50): p50 {:.2}× the floor \
         (target ≤ 1.2×); throughput at c=4 {:.2}× the floor's (target ≥ 0.7×) and {:.1}× the \
         reference v5 model's (target ≥ 10×).\n",
        default_pug.p50.as_secs_f64() / floor.p50.as_secs_f64(),
        default_pug.throughput / floor.throughput,
        default_pug.throughput / fresh.throughput,
    );
    let chromium = std::process::Command::new(&a.chrome)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "Renderer benchmark — {chromium} (`{}`), {} CPUs, page {WIDTH}×{HEIGHT} PNG.\n\
         c=1: {} sequential renders (fresh: {}); c=4: {} renders by 4 workers (fresh: {}).\n\n",
        a.chrome,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        a.c1,
        a.fresh,
        a.c4,
        a.fresh
    ));
    out.push_str("| mode | p50 (c=1) | p95 (c=1) | p50 vs floor | throughput (c=4) | vs reference v5 model | CPU per render (c=4) | peak Chromium RSS |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        out.push_str(&format!(
            "| {} | {:.0} ms | {:.0} ms | {:.2}× | {:.1}/s | {:.1}× | {:.0} ms | {} MiB |\n",
            r.name,
            r.p50.as_secs_f64() * 1000.0,
            r.p95.as_secs_f64() * 1000.0,
            r.p50.as_secs_f64() / floor.p50.as_secs_f64(),
            r.throughput,
            r.throughput / fresh.throughput,
            r.cpu_per_render.as_secs_f64() * 1000.0,
            r.peak_rss >> 20
        ));
    }
    for (mode, start, at) in [
        ("fresh context per render", rss_start, &rss_at),
        ("page reused ×50", reuse_rss_start, &reuse_rss_at),
    ] {
        out.push_str(&format!(
            "\npug's Chromium RSS over {} renders ({mode}; c=4, no browser recycling): start {} MiB",
            a.long,
            start >> 20
        ));
        for (n, rss) in at {
            out.push_str(&format!(", after {n}: {} MiB", rss >> 20));
        }
        out.push_str(".\n");
    }
    out.push_str(&targets);
    println!("{out}");
    std::fs::write(&a.results, &out).expect("writes the results file");
    eprintln!("wrote {}", a.results.display());
}

/// The floor's row: 4 open tabs of one running Chromium (profile in `profile`), each render
/// a navigation, `load` and a screenshot; with `intercept`, every request of each tab is
/// paused and continued over CDP.
async fn floor_row(
    a: &Args,
    profile: &std::path::Path,
    page_url: &str,
    name: &str,
    intercept: bool,
) -> Row {
    let (browser, task) = launch(&a.chrome, profile).await;
    let browser = Arc::new(browser);
    let mut tabs = Vec::new();
    let mut continuers = Vec::new();
    for _ in 0..4 {
        let tab = new_page(&browser).await;
        if intercept {
            continuers.push(continue_every_request(&tab).await);
        }
        tabs.push(tab);
    }
    let tabs = Arc::new(tabs);
    // The page needs a renderKey cookie; set it once for the shared default context.
    tabs[0].execute(render_key_cookie()).await.unwrap();
    let url = page_url.to_owned();
    let row = measure(name, a.c1, a.c4, move |w| {
        let (tabs, url) = (tabs.clone(), url.clone());
        async move { screenshot_after_load(&tabs[w % 4], &url).await }
    })
    .await;
    for c in continuers {
        c.abort();
    }
    if let Ok(mut b) = Arc::try_unwrap(browser) {
        let _ = b.close().await;
        let _ = b.wait().await;
    }
    task.abort();
    row
}

/// pug's renderer with `page_reuse`, over HTTP: its rows and its Chromium's memory over
/// `--long` renders (start, then at each checkpoint).
async fn pug_renderer_rows(
    a: &Args,
    tmp: &std::path::Path,
    page_url: &str,
    slow_url: &str,
    page_reuse: u32,
    label: &str,
) -> (Vec<Row>, u64, Vec<(usize, u64)>) {
    let mut rows = Vec::new();
    // The no-sandbox variant is measured on the fast page only, without the long run.
    let no_sandbox = label.contains("no_sandbox");
    let (page_url, slow_url) = (page_url.to_owned(), slow_url.to_owned());
    let config = RendererConfig {
        chrome_path: a.chrome.clone().into(),
        temp_dir: Some(tmp.to_owned()),
        auth_tokens: vec!["bench".into()],
        max_concurrency: 4,
        renders_per_browser: 0,
        page_reuse,
        chrome_args: if no_sandbox {
            vec!["--disable-gpu".to_owned(), "--no-sandbox".to_owned()]
        } else {
            RendererConfig::default().chrome_args
        },
        ..RendererConfig::default()
    };
    let renderer = Renderer::start(config, Arc::new(StaticTokens::new(["bench"])))
        .await
        .expect("renderer starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let router = renderer.router();
        async move { axum::serve(listener, router).await }
    });
    let client = pug_test_support::http::client();
    let pug_render = {
        let client = client.clone();
        move |url: String| {
            let client = client.clone();
            async move {
                let res = client
                    .get(format!("http://{addr}/render"))
                    .header("X-Auth-Token", "bench")
                    .query(&[
                        ("url", url.as_str()),
                        ("width", "1000"),
                        ("height", "500"),
                        ("encoding", "png"),
                        ("renderKey", "k"),
                        ("domain", "127.0.0.1"),
                        ("timeout", "30"),
                    ])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                res.bytes().await.unwrap();
            }
        }
    };
    {
        let (r, url) = (pug_render.clone(), page_url.clone());
        rows.push(
            measure(&format!("pug renderer{label}"), a.c1, a.c4, move |_| {
                r(url.clone())
            })
            .await,
        );
        if no_sandbox {
            renderer.shutdown().await;
            return (rows, 0, Vec::new());
        }
        let (r, url) = (pug_render.clone(), slow_url.clone());
        rows.push(
            measure(
                &format!("pug renderer{label}, page ready 200 ms after its query"),
                a.c1 / 2,
                a.c4 / 2,
                move |_| r(url.clone()),
            )
            .await,
        );
    }

    // --- RSS of pug's Chromium over many renders (no recycling).
    let rss_start = children_rss();
    let mut rss_at = Vec::new();
    let next = Arc::new(AtomicU64::new(0));
    let checkpoints = [a.long / 10, a.long / 2, a.long];
    let mut done = 0;
    for cp in checkpoints {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (r, url, next) = (pug_render.clone(), page_url.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < cp as u64 {
                        r(url.clone()).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        next.store(cp as u64, Ordering::Relaxed);
        done = cp;
        rss_at.push((cp, children_rss()));
        eprintln!("after {cp} renders: {} MiB", children_rss() >> 20);
    }
    let _ = done;
    renderer.shutdown().await;
    (rows, rss_start, rss_at)
}
