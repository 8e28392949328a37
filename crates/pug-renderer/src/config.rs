//! Settings of the renderer, and where they come from.
//!
//! Owns: [`RendererConfig`] with its defaults (those of Grafana's reference renderer, noted per
//! field), the reading of the environment variables of Grafana's renderer image
//! ([`RendererConfig::from_env`], in [`mod@env`]), and the validation that reports every bad
//! variable at once.
//!
//! Must not: start anything, touch the network or the browser. Flags (`pug render --…`) live in
//! [`crate::cli`] and are applied on top of what this module reads.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::params::Encoding;

mod env;

pub(crate) use self::env::{parse_bool, parse_listen_addr};

/// Where pug looks for a browser when none is configured, best first.
///
/// Chromium's headless shell (Debian: `apt-get install chromium-headless-shell`; Chrome for
/// Testing ships it as `chrome-headless-shell`) comes first: it is the browser's old headless
/// mode, without the full browser's profile machinery. An incognito context, and the renderer
/// process of its first page, cost a quarter of the CPU they cost in the full browser's
/// headless mode (bench/renderer: ~130 against ~540 ms of CPU per render with a fresh context
/// on a 2-core VM), which more than doubles pug's throughput. The full browser works too.
///
/// Debian's `/usr/bin/chromium-headless-shell` is a shell script that does not `exec` the
/// browser (killing it would leave the browser running), so the binary behind it is named.
pub const BROWSER_CANDIDATES: &[&str] = &[
    "/usr/lib/chromium/chromium-headless-shell",
    "chrome-headless-shell",
    "chromium",
    "chromium-browser",
    "google-chrome",
];

/// The executable `name` resolves to: a path as given (if it is a file), else the first
/// match on `PATH`.
pub fn find_executable(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = Path::new(name);
        return path.is_file().then(|| path.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The first installed browser of [`BROWSER_CANDIDATES`].
pub fn find_browser() -> Option<PathBuf> {
    BROWSER_CANDIDATES.iter().find_map(|c| find_executable(c))
}

/// Every setting of the renderer. [`Default`] gives the reference renderer's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RendererConfig {
    /// Where the HTTP API listens. Reference: `:8081` (`SERVER_ADDR`, or `HTTP_HOST`/`HTTP_PORT`).
    pub addr: SocketAddr,
    /// Accepted `X-Auth-Token` values when running standalone. Reference: `-`, which is also
    /// Grafana's default `renderer_token`, so an unconfigured pair works out of the box.
    pub auth_tokens: Vec<String>,
    /// `host` or `host:port` entries a render URL (and every navigation it makes) must match
    /// (`RENDERING_ALLOWED_HOSTS` or `PUG_RENDERER_ALLOWED_HOSTS`, comma-separated). Empty
    /// means any host for a real token and none for Grafana's default token `-`; link-local
    /// and cloud-metadata addresses are refused regardless.
    pub allowed_hosts: Vec<String>,
    /// Whether `/metrics` is served. Reference (Go): always on.
    pub metrics_enabled: bool,
    /// The Chromium binary (`CHROME_BIN`, `BROWSER_PATH`). Default: the first installed of
    /// [`BROWSER_CANDIDATES`] (Chromium's headless shell, else Chromium). Reference: `chromium`.
    pub chrome_path: PathBuf,
    /// Extra Chromium flags (`RENDERING_ARGS`). Default `--disable-gpu`; the reference's
    /// default also has `--no-sandbox`, which pug takes only from the operator (and warns).
    pub chrome_args: Vec<String>,
    /// The uid and gid Chromium runs as when pug runs as root (`PUG_RENDERER_BROWSER_UID`).
    /// `None`: [`crate::engine::browser::DEFAULT_BROWSER_UID`]. Ignored when pug is not root
    /// (the browser then runs as pug's user).
    pub browser_uid: Option<u32>,
    /// Accept invalid TLS certificates of the rendered site. Reference: false.
    pub ignore_https_errors: bool,
    /// Timezone of the browser when a request names none. Reference: `TZ`, else `Etc/UTC`.
    pub browser_timezone: String,
    /// `Accept-Language` used when a request sends none (`RENDERING_LANGUAGE`). Reference: none.
    pub language: Option<String>,
    /// Viewport defaults and bounds of a request.
    pub viewport: ViewportLimits,
    /// Renders running at once. Reference (v4 `RENDERING_CLUSTERING_MAX_CONCURRENCY`): 5.
    pub max_concurrency: usize,
    /// Renders allowed to wait for a slot; beyond that a request gets 429. The reference has no
    /// queue (it rejects at once); a short queue absorbs Grafana's bursts of a dashboard's panels.
    pub max_queue: usize,
    /// Request timeout when the request names none. Reference: 30 s.
    pub default_timeout: Duration,
    /// Upper bound of a request's `timeout`. Reference: unbounded; pug caps it.
    pub max_timeout: Duration,
    /// Encoding of `/render` when the request names none. Reference (Go): pdf.
    pub default_encoding: Encoding,
    /// Blank pages (each in its own fresh context) kept open ahead of time, so that a render
    /// starts at navigation instead of waiting ~0.2 s for a page to open. 0 = none.
    pub spare_pages: usize,
    /// Renders one page (and its incognito context) serves before it is closed
    /// (`PUG_RENDERER_PAGE_REUSE`). Default 50; 1, the strict option, gives every render a
    /// fresh context. Above 1, a page serves several renders of the same scope (one tenant; anything in standalone
    /// mode) and is wiped between them — document left, cookies, storage of every origin it
    /// talked to, HTTP cache and startup scripts removed, overrides set anew — so only the
    /// renderer process is reused. That saves the ~0.3 s of CPU a context costs (see
    /// bench/renderer). PNG and PDF only; CSV exports always get a fresh context.
    pub page_reuse: u32,
    /// Chromium is replaced after this many renders (0 = never).
    pub renders_per_browser: u64,
    /// Chromium is replaced when its process tree's resident memory exceeds this (0 = never).
    pub max_browser_rss_bytes: u64,
    /// How often Chromium is pinged; a browser that does not answer within this is restarted.
    pub health_check_interval: Duration,
    /// Where Chromium's profile and download directories are created. `None` = the system's.
    pub temp_dir: Option<PathBuf>,
    /// How readiness is detected.
    pub readiness: ReadinessConfig,
}

/// Defaults and bounds for the viewport of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewportLimits {
    /// Width when the request's is missing or below 10. Reference: 1000.
    pub default_width: u32,
    /// Height when the request's is missing. Reference: 500.
    pub default_height: u32,
    /// `deviceScaleFactor` when missing. Reference: 1.
    pub default_scale: f64,
    /// Widths above this are refused (400). Reference: 3000.
    pub max_width: u32,
    /// Heights above this are refused (400). Reference: 3000.
    pub max_height: u32,
    /// Scales above this are refused (400). Reference: 4.
    pub max_scale: f64,
    /// Bound of a full-page (`height=-1`) capture; the reference has none.
    pub max_full_page_height: u32,
}

/// How the engine decides that a page is ready to be captured.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessConfig {
    /// Interval between two polls of the page's state. Reference: 100 ms.
    pub poll_interval: Duration,
    /// How long the polled signals (network idle, no running query) must hold before the page
    /// counts as ready. Replaces the reference's 1 s prior wait and 3 s first-query give-up.
    pub quiet_period: Duration,
}

impl RendererConfig {
    /// Whether the operator turned Chromium's sandbox off (`--no-sandbox`).
    pub fn sandbox_disabled(&self) -> bool {
        self.chrome_args
            .iter()
            .any(|a| a.trim_start_matches('-') == "no-sandbox")
    }
}

impl Default for RendererConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8081),
            auth_tokens: vec!["-".to_owned()],
            allowed_hosts: Vec::new(),
            metrics_enabled: true,
            // Named as is when nothing is installed, so the launch error says what is missing.
            chrome_path: find_browser().unwrap_or_else(|| PathBuf::from("chromium")),
            chrome_args: vec!["--disable-gpu".to_owned()],
            browser_uid: None,
            ignore_https_errors: false,
            browser_timezone: "Etc/UTC".to_owned(),
            language: None,
            viewport: ViewportLimits::default(),
            max_concurrency: 5,
            max_queue: 50,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            default_encoding: Encoding::Pdf,
            spare_pages: 2,
            page_reuse: 50,
            renders_per_browser: 1000,
            max_browser_rss_bytes: 2 << 30,
            health_check_interval: Duration::from_secs(10),
            temp_dir: None,
            readiness: ReadinessConfig::default(),
        }
    }
}

impl Default for ViewportLimits {
    fn default() -> Self {
        Self {
            default_width: 1000,
            default_height: 500,
            default_scale: 1.0,
            max_width: 3000,
            max_height: 3000,
            max_scale: 4.0,
            max_full_page_height: 20_000,
        }
    }
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(20),
            quiet_period: Duration::from_millis(100),
        }
    }
}

/// Configuration that cannot be used; lists every problem found, not only the first.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// One or more settings are invalid.
    #[error("invalid renderer configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Environment variable or flag name.
    pub name: String,
    /// The offending value.
    pub value: String,
    /// Why it is refused, and what is accepted instead.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.name, self.value, self.reason)
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl RendererConfig {
    /// [`Self::validate`], plus what only the standalone renderer needs: its own tokens (inside
    /// `pug serve` tokens come from the tenants instead).
    pub fn validate_standalone(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.auth_tokens.is_empty() {
            problems.push(Problem {
                name: "AUTH_TOKEN".into(),
                value: String::new(),
                reason: "at least one token is required".into(),
            });
        }
        self.validate_into(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Checks the relations between settings (after env and flags have been applied).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.validate_into(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    fn validate_into(&self, problems: &mut Vec<Problem>) {
        let vp = &self.viewport;
        let mut check = |ok: bool, name: &str, value: String, reason: &str| {
            if !ok {
                problems.push(Problem {
                    name: name.to_owned(),
                    value,
                    reason: reason.to_owned(),
                });
            }
        };
        check(
            vp.default_width <= vp.max_width,
            "RENDERING_VIEWPORT_WIDTH",
            vp.default_width.to_string(),
            "larger than RENDERING_VIEWPORT_MAX_WIDTH",
        );
        check(
            vp.default_height <= vp.max_height,
            "RENDERING_VIEWPORT_HEIGHT",
            vp.default_height.to_string(),
            "larger than RENDERING_VIEWPORT_MAX_HEIGHT",
        );
        check(
            vp.default_scale <= vp.max_scale,
            "RENDERING_VIEWPORT_DEVICE_SCALE_FACTOR",
            vp.default_scale.to_string(),
            "larger than RENDERING_VIEWPORT_MAX_DEVICE_SCALE_FACTOR",
        );
        for arg in &self.chrome_args {
            // These put frames of other sites in processes of their own, out of reach of the
            // page's request interception: the URL policy would no longer see their requests.
            let flag = arg.trim_start_matches('-');
            let isolating = ["site-per-process", "isolate-origins"]
                .iter()
                .any(|f| flag == *f || flag.starts_with(&format!("{f}=")));
            check(
                !isolating,
                "RENDERING_ARGS",
                arg.clone(),
                "site isolation would move iframes out of the renderer's URL policy; remove this flag",
            );
            let proxying = [
                "proxy-server",
                "proxy-bypass-list",
                "no-proxy-server",
                "proxy-pac-url",
                "host-resolver-rules",
            ]
            .iter()
            .any(|f| flag == *f || flag.starts_with(&format!("{f}=")));
            check(
                !proxying,
                "RENDERING_ARGS",
                arg.clone(),
                "the browser's connections go through pug's own proxy, which enforces the URL policy at connect time; remove this flag",
            );
        }
        for host in &self.allowed_hosts {
            check(
                crate::security::HostPattern::parse(host).is_some(),
                "allowed-host",
                host.clone(),
                "expected host or host:port",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference() {
        let c = RendererConfig::from_vars(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c, RendererConfig::default());
        assert_eq!(c.addr.port(), 8081);
        assert_eq!(c.auth_tokens, vec!["-"]);
        assert_eq!(c.max_concurrency, 5);
        assert_eq!(c.viewport.default_width, 1000);
    }

    #[test]
    fn reads_the_reference_image_variables() {
        let c = RendererConfig::from_vars([
            ("HTTP_HOST", "127.0.0.1"),
            ("HTTP_PORT", "9000"),
            ("AUTH_TOKEN", "a b,c"),
            ("IGNORE_HTTPS_ERRORS", "true"),
            ("ENABLE_METRICS", "false"),
            ("CHROME_BIN", "/usr/bin/chromium"),
            ("RENDERING_ARGS", "--no-sandbox, --disable-gpu,--lang=de"),
            ("BROWSER_TZ", "Europe/Berlin"),
            ("TZ", "Asia/Tokyo"),
            ("RENDERING_CLUSTERING_MAX_CONCURRENCY", "3"),
            ("RENDERING_VIEWPORT_WIDTH", "800"),
            ("RENDERING_VIEWPORT_MAX_DEVICE_SCALE_FACTOR", "2"),
            ("RENDERING_MODE", "clustered"),
            (
                "PUG_RENDERER_ALLOWED_HOSTS",
                "grafana:3000, *.tenants.example",
            ),
        ])
        .unwrap();
        assert_eq!(c.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.auth_tokens, vec!["a", "b", "c"]);
        assert!(c.ignore_https_errors);
        assert!(!c.metrics_enabled);
        assert_eq!(c.chrome_path, PathBuf::from("/usr/bin/chromium"));
        assert_eq!(
            c.chrome_args,
            vec!["--no-sandbox", "--disable-gpu", "--lang=de"]
        );
        assert_eq!(c.browser_timezone, "Europe/Berlin");
        assert_eq!(c.max_concurrency, 3);
        assert_eq!(c.viewport.default_width, 800);
        assert_eq!(c.viewport.max_scale, 2.0);
        assert_eq!(c.allowed_hosts, vec!["grafana:3000", "*.tenants.example"]);
    }

    #[test]
    fn newer_names_win_over_older_ones() {
        let c = RendererConfig::from_vars([
            ("HTTP_PORT", "9000"),
            ("SERVER_ADDR", ":7000"),
            ("CHROME_BIN", "/a"),
            ("BROWSER_PATH", "/b"),
        ])
        .unwrap();
        assert_eq!(c.addr.port(), 7000);
        assert_eq!(c.chrome_path, PathBuf::from("/b"));
    }

    #[test]
    fn page_reuse_is_read_and_defaults_to_fifty() {
        assert_eq!(RendererConfig::default().page_reuse, 50);
        let c = RendererConfig::from_vars([("PUG_RENDERER_PAGE_REUSE", "1")]).unwrap();
        assert_eq!(c.page_reuse, 1, "the strict option");
    }

    #[test]
    fn every_invalid_variable_is_reported() {
        let err = RendererConfig::from_vars([
            ("HTTP_PORT", "eighty"),
            ("IGNORE_HTTPS_ERRORS", "maybe"),
            ("RENDERING_VIEWPORT_WIDHT", "10"),
            ("RENDERING_CLUSTERING_MAX_CONCURRENCY", "0"),
            ("BROWSER_TZ", "Mars/Olympus"),
            ("RENDERING_MODE", "fast"),
            ("HTTP_PROTOCOL", "https"),
            ("PUG_RENDERER_PAGE_REUSE", "0"),
            ("RENDERING_ARGS", "--no-sandbox,--site-per-process"),
        ])
        .unwrap_err();
        let ConfigError::Invalid(problems) = &err;
        let names: Vec<&str> = problems.iter().map(|p| p.name.as_str()).collect();
        for expected in [
            "HTTP_PORT",
            "IGNORE_HTTPS_ERRORS",
            "RENDERING_VIEWPORT_WIDHT",
            "RENDERING_CLUSTERING_MAX_CONCURRENCY",
            "BROWSER_TZ",
            "RENDERING_MODE",
            "HTTP_PROTOCOL",
            "PUG_RENDERER_PAGE_REUSE",
            "RENDERING_ARGS",
        ] {
            assert!(names.contains(&expected), "{expected} missing in {err}");
        }
        assert!(err.to_string().contains("HTTP_PORT=\"eighty\""), "{err}");
    }

    #[test]
    fn relations_between_settings_are_checked() {
        let err = RendererConfig::from_vars([
            ("RENDERING_VIEWPORT_WIDTH", "4000"),
            ("RENDERING_VIEWPORT_MAX_WIDTH", "3000"),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("RENDERING_VIEWPORT_WIDTH"),
            "{err}"
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_addr(":8081").unwrap().port(), 8081);
        assert_eq!(
            parse_listen_addr("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_listen_addr("nonsense").is_err());
    }
}
