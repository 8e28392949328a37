//! Settings of the renderer, and where they come from.
//!
//! Owns: [`RendererConfig`] with its defaults (those of Grafana's reference renderer, noted per
//! field), the reading of the environment variables of Grafana's renderer image
//! ([`RendererConfig::from_env`]), and the validation that reports every bad variable at once.
//!
//! Must not: start anything, touch the network or the browser. Flags (`pug render --…`) live in
//! [`crate::cli`] and are applied on top of what this module reads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::params::Encoding;

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

/// Environment variables of the reference images that are accepted for compatibility but change
/// nothing in pug (pug has one engine model, one log setup, and no TLS listener of its own).
const ACCEPTED_WITHOUT_EFFECT: &[&str] = &[
    "LOG_LEVEL",
    "RENDERING_MODE",
    "RENDERING_CLUSTERING_MODE",
    "RENDERING_CLUSTERING_TIMEOUT",
    "RENDERING_CLUSTERING_MONITOR",
    "RENDERING_VERBOSE_LOGGING",
    "RENDERING_DUMPIO",
    "RENDERING_TIMING_METRICS",
    "RENDERING_TRACING_URL",
    "RENDERING_TRACING_SERVICE_NAME",
    "RENDERING_HEADED",
    "RENDERING_VIEWPORT_PAGE_ZOOM_LEVEL",
    "RENDERING_EMULATE_NETWORK_CONDITIONS",
    "RENDERING_NETWORK_CONDITIONS",
    "HTTP_MIN_TLS_VERSION",
];

/// Every `RENDERING_*` name pug knows; any other `RENDERING_*` variable is a typo and fails.
const KNOWN_RENDERING: &[&str] = &[
    "RENDERING_ARGS",
    "RENDERING_ALLOWED_HOSTS",
    "RENDERING_LANGUAGE",
    "RENDERING_CLUSTERING_MAX_CONCURRENCY",
    "RENDERING_VIEWPORT_WIDTH",
    "RENDERING_VIEWPORT_HEIGHT",
    "RENDERING_VIEWPORT_DEVICE_SCALE_FACTOR",
    "RENDERING_VIEWPORT_MAX_WIDTH",
    "RENDERING_VIEWPORT_MAX_HEIGHT",
    "RENDERING_VIEWPORT_MAX_DEVICE_SCALE_FACTOR",
];

impl RendererConfig {
    /// Reads the env vars of Grafana's renderer image (HTTP_HOST, HTTP_PORT, AUTH_TOKEN,
    /// IGNORE_HTTPS_ERRORS, ENABLE_METRICS, CHROME_BIN, RENDERING_ARGS, BROWSER_TZ/TZ,
    /// RENDERING_CLUSTERING_MAX_CONCURRENCY, RENDERING_VIEWPORT_*, SERVER_ADDR, BROWSER_PATH ...),
    /// reporting every invalid one.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// [`Self::from_env`] over any set of variables (tests pass a list).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let mut env = Reader {
            vars: &vars,
            problems: Vec::new(),
        };
        let mut c = RendererConfig::default();

        // Listener: SERVER_ADDR (Go) wins over HTTP_HOST/HTTP_PORT (Node).
        let host = env.parse("HTTP_HOST", |v| {
            v.parse::<IpAddr>()
                .map_err(|_| "expected an IP address such as 0.0.0.0 or ::".to_owned())
        });
        let port = env.parse("HTTP_PORT", |v| {
            v.parse::<u16>()
                .map_err(|_| "expected a port number 0-65535".to_owned())
        });
        if let Some(host) = host {
            c.addr.set_ip(host);
        }
        if let Some(port) = port {
            c.addr.set_port(port);
        }
        if let Some(addr) = env.parse("SERVER_ADDR", parse_listen_addr) {
            c.addr = addr;
        }
        env.parse("HTTP_PROTOCOL", |v| match v {
            "http" => Ok(()),
            _ => Err(
                "only http is served; terminate TLS in front of the renderer (a proxy or pug's gateway)"
                    .to_owned(),
            ),
        });
        for name in ["HTTP_CERT_FILE", "HTTP_CERT_KEY"] {
            env.parse(name, |_| -> Result<(), String> {
                Err("TLS on the renderer's own listener is not supported; terminate TLS in front of it".to_owned())
            });
        }

        if let Some(tokens) = env.parse("AUTH_TOKEN", parse_tokens) {
            c.auth_tokens = tokens;
        }
        for name in ["RENDERING_ALLOWED_HOSTS", "PUG_RENDERER_ALLOWED_HOSTS"] {
            if let Some(hosts) = env.parse(name, |v| {
                let hosts: Vec<String> = v
                    .split([',', ' '])
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect();
                match hosts
                    .iter()
                    .find(|h| crate::security::HostPattern::parse(h).is_none())
                {
                    Some(bad) => Err(format!("{bad:?} is not host or host:port")),
                    None => Ok(hosts),
                }
            }) {
                c.allowed_hosts = hosts;
            }
        }
        if let Some(v) = env.parse("PUG_RENDERER_PAGE_REUSE", |v| match v.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err("expected a whole number of renders, 1 or more (1 = a fresh context for every render)".to_owned()),
        }) {
            c.page_reuse = v;
        }
        if let Some(v) = env.parse("PUG_RENDERER_BROWSER_UID", |v| match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err("expected a uid other than 0 (root)".to_owned()),
        }) {
            c.browser_uid = Some(v);
        }
        if let Some(v) = env.parse("IGNORE_HTTPS_ERRORS", parse_bool) {
            c.ignore_https_errors = v;
        }
        if let Some(v) = env.parse("ENABLE_METRICS", parse_bool) {
            c.metrics_enabled = v;
        }
        // BROWSER_PATH (Go) wins over CHROME_BIN (Node image).
        for name in ["CHROME_BIN", "BROWSER_PATH"] {
            if let Some(v) = env.parse(name, non_empty) {
                c.chrome_path = PathBuf::from(v);
            }
        }
        if let Some(v) = env.parse("RENDERING_ARGS", |v| {
            let args: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            match args.iter().find(|a| !a.starts_with("--")) {
                Some(bad) => Err(format!(
                    "{bad:?} is not a flag; expected a comma-separated list of --flags"
                )),
                None => Ok(args),
            }
        }) {
            c.chrome_args = v;
        }
        // BROWSER_TZ (Node) wins over TZ; BROWSER_TIMEZONE is the Go spelling.
        for name in ["TZ", "BROWSER_TIMEZONE", "BROWSER_TZ"] {
            if let Some(v) = env.parse(name, |v| {
                crate::params::parse_timezone(v).ok_or_else(|| {
                    "expected an IANA timezone name such as Europe/Berlin, or UTC±hh:mm".to_owned()
                })
            }) {
                c.browser_timezone = v;
            }
        }
        if let Some(v) = env.parse("RENDERING_LANGUAGE", non_empty) {
            c.language = Some(v);
        }
        if let Some(v) = env.parse("RENDERING_CLUSTERING_MAX_CONCURRENCY", positive_usize) {
            c.max_concurrency = v;
        }
        let vp = &mut c.viewport;
        if let Some(v) = env.parse("RENDERING_VIEWPORT_WIDTH", positive_u32) {
            vp.default_width = v;
        }
        if let Some(v) = env.parse("RENDERING_VIEWPORT_HEIGHT", positive_u32) {
            vp.default_height = v;
        }
        if let Some(v) = env.parse("RENDERING_VIEWPORT_DEVICE_SCALE_FACTOR", positive_f64) {
            vp.default_scale = v;
        }
        if let Some(v) = env.parse("RENDERING_VIEWPORT_MAX_WIDTH", positive_u32) {
            vp.max_width = v;
        }
        if let Some(v) = env.parse("RENDERING_VIEWPORT_MAX_HEIGHT", positive_u32) {
            vp.max_height = v;
        }
        if let Some(v) = env.parse("RENDERING_VIEWPORT_MAX_DEVICE_SCALE_FACTOR", positive_f64) {
            vp.max_scale = v;
        }

        // Accepted names without effect still get their values checked where they have a fixed set.
        for name in ACCEPTED_WITHOUT_EFFECT {
            if let Some(value) = vars.get(*name) {
                let allowed: &[&str] = match *name {
                    "RENDERING_MODE" => &["default", "reusable", "clustered"],
                    "RENDERING_CLUSTERING_MODE" => &["browser", "context", "contextPerRenderKey"],
                    "LOG_LEVEL" => &["error", "warn", "info", "debug", "trace"],
                    _ => &[],
                };
                if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                    env.problem(
                        name,
                        value,
                        format!("expected one of {}", allowed.join(", ")),
                    );
                } else {
                    tracing::info!(
                        variable = name,
                        "accepted for compatibility; has no effect in pug"
                    );
                }
            }
        }
        for (name, value) in &vars {
            if name.starts_with("RENDERING_")
                && !KNOWN_RENDERING.contains(&name.as_str())
                && !ACCEPTED_WITHOUT_EFFECT.contains(&name.as_str())
            {
                env.problem(
                    name,
                    value,
                    "unknown RENDERING_* variable (a typo?)".to_owned(),
                );
            }
        }

        c.validate_into(&mut env.problems);
        if env.problems.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError::Invalid(env.problems))
        }
    }

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

/// Collects problems while reading variables, so every bad one is reported together.
struct Reader<'a> {
    vars: &'a BTreeMap<String, String>,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    /// Parses `name` if set; records a problem and returns `None` if the value is invalid.
    fn parse<T>(&mut self, name: &str, f: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        let value = self.vars.get(name)?;
        match f(value.trim()) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.problem(name, value, reason);
                None
            }
        }
    }

    fn problem(&mut self, name: &str, value: &str, reason: String) {
        self.problems.push(Problem {
            name: name.to_owned(),
            value: value.to_owned(),
            reason,
        });
    }
}

pub(crate) fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

fn non_empty(v: &str) -> Result<String, String> {
    if v.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(v.to_owned())
    }
}

fn positive_u32(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a positive integer".to_owned()),
    }
}

fn positive_usize(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a positive integer".to_owned()),
    }
}

fn positive_f64(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(n),
        _ => Err("expected a positive number".to_owned()),
    }
}

/// Tokens: comma- or space-separated (Go accepts commas, Node spaces).
fn parse_tokens(v: &str) -> Result<Vec<String>, String> {
    let tokens: Vec<String> = v
        .split([',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        Err("expected at least one token".to_owned())
    } else {
        Ok(tokens)
    }
}

/// `:8081`, `0.0.0.0:8081`, `[::]:8081` or `localhost:8081`.
pub(crate) fn parse_listen_addr(v: &str) -> Result<SocketAddr, String> {
    let bad = || "expected [host]:port, e.g. :8081 or 127.0.0.1:8081".to_owned();
    if let Some(port) = v.strip_prefix(':') {
        let port = port.parse::<u16>().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = v.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    Err(bad())
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
