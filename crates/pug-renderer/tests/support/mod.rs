//! Shared harness of the integration tests: real Chromium, the grafana-standin's render-test
//! pages on a local port, and a renderer serving its router on another.
#![allow(dead_code)]

#[path = "../../../../testing/grafana-standin/src/render_pages.rs"]
pub mod render_pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pug_renderer::{Renderer, RendererConfig, StaticTokens, TokenScopes};

pub const TOKEN: &str = "test-token";

/// The Chromium the tests drive. Missing Chromium fails the test, never skips it.
pub fn chromium() -> PathBuf {
    // The browser pug itself picks (Chromium's headless shell before Chromium), unless
    // CHROME_BIN names another (CHROME_BIN=/usr/bin/chromium runs them on the full browser).
    let path = std::env::var_os("CHROME_BIN")
        .map(PathBuf::from)
        .or_else(pug_renderer::config::find_browser)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    assert!(
        path.exists(),
        "Chromium not found at {}: these tests need a real browser. Install it with \
         `apt-get install chromium-headless-shell chromium` (Debian), or set CHROME_BIN.",
        path.display()
    );
    path
}

/// Serves a router on 127.0.0.1:0 until the test ends.
pub async fn serve(router: axum::Router) -> SocketAddr {
    serve_on("127.0.0.1", router).await
}

/// Serves a router on `ip`:0 (another loopback address is another site to the browser).
pub async fn serve_on(ip: &str, router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// The render-test pages of the grafana-standin.
pub async fn pages() -> SocketAddr {
    serve(render_pages::routes()).await
}

/// The render-test pages on another loopback address: another site, so the browser gives its
/// frames a process of their own.
pub async fn pages_on_another_site() -> SocketAddr {
    serve_on("127.0.0.2", render_pages::routes()).await
}

/// A renderer on a local port with a private temp directory.
pub struct Harness {
    pub renderer: Option<Renderer>,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub temp: tempfile::TempDir,
}

/// Test defaults: real Chromium, private temp dir, PNG by default, one token.
pub fn config(temp: &tempfile::TempDir) -> RendererConfig {
    // As root the browser runs as a user of its own, which must reach its profile in here.
    std::fs::set_permissions(
        temp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    RendererConfig {
        chrome_path: chromium(),
        temp_dir: Some(temp.path().to_owned()),
        auth_tokens: vec![TOKEN.to_owned()],
        default_encoding: pug_renderer::params::Encoding::Png,
        // The strict option, so that each test's renders start from nothing; tests of reuse
        // set it themselves.
        page_reuse: 1,
        ..RendererConfig::default()
    }
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut RendererConfig)) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let mut c = config(&temp);
        tweak(&mut c);
        let scopes: Arc<dyn TokenScopes> = Arc::new(StaticTokens::new(&c.auth_tokens));
        Self::start_scoped(temp, c, scopes).await
    }

    pub async fn start_scoped(
        temp: tempfile::TempDir,
        config: RendererConfig,
        scopes: Arc<dyn TokenScopes>,
    ) -> Self {
        // The renderer's log goes to the test's output, which nextest shows when a test fails
        // (RUST_LOG overrides the level).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pug_renderer=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let renderer = Renderer::start(config, scopes)
            .await
            .expect("renderer starts");
        let addr = serve(renderer.router()).await;
        Self {
            renderer: Some(renderer),
            addr,
            client: pug_test_support::http::client(),
            temp,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// GET /render… with the test token and the given query pairs.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("X-Auth-Token", TOKEN)
            .query(query)
            .send()
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(r) = self.renderer.take() {
            r.shutdown().await;
        }
        self.temp
    }
}

/// A decoded PNG as RGBA.
pub struct Image {
    pub width: u32,
    pub height: u32,
    rgba: Vec<u8>,
}

impl Image {
    pub fn decode(bytes: &[u8]) -> Self {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("a PNG frame");
        let channels = info.color_type.samples();
        let rgba = buf[..info.buffer_size()]
            .chunks(channels)
            .flat_map(|px| match channels {
                4 => [px[0], px[1], px[2], px[3]],
                3 => [px[0], px[1], px[2], 255],
                2 => [px[0], px[0], px[0], px[1]],
                _ => [px[0], px[0], px[0], 255],
            })
            .collect();
        Self {
            width: info.width,
            height: info.height,
            rgba,
        }
    }

    pub fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * self.width + x) * 4) as usize;
        [
            self.rgba[i],
            self.rgba[i + 1],
            self.rgba[i + 2],
            self.rgba[i + 3],
        ]
    }

    /// The standin's chart colour #e02f44, within a small tolerance.
    pub fn is_chart(&self, x: u32, y: u32) -> bool {
        let [r, g, b, _] = self.pixel(x, y);
        r.abs_diff(0xe0) < 8 && g.abs_diff(0x2f) < 8 && b.abs_diff(0x44) < 8
    }
}

/// Polls the harness's `/metrics` until a line satisfies `pred` (a readiness poll, not a
/// timed assertion), for at most 30 s.
pub async fn wait_for_metric(h: &Harness, pred: impl Fn(&str) -> bool, what: &str) {
    let url = h.url("/metrics");
    let pred = &pred;
    let what = format!("{what} in /metrics");
    pug_test_support::wait_for(Duration::from_secs(30), &what, || {
        let url = url.clone();
        async move {
            let text = pug_test_support::http::get(url)
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines().any(pred).then_some(())
        }
    })
    .await
}

/// The standin's request log.
pub async fn page_log(pages: SocketAddr) -> Vec<serde_json::Value> {
    pug_test_support::http::get(format!("http://{pages}/render-test/log"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Processes whose command line mentions `needle` (e.g. a test's temp dir).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    procfs::process::all_processes()
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let cmd = p.cmdline().ok()?.join(" ");
            let state = p.stat().ok()?.state;
            (cmd.contains(needle) && state != 'Z').then_some((p.pid, cmd))
        })
        .collect()
}
