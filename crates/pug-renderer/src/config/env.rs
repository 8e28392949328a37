//! Reading the renderer's settings from the environment variables of Grafana's renderer
//! images (the Go image's and the Node image's names), every invalid one reported at once.
//!
//! Owns: which variables are known, accepted without effect, or a typo; how each value is
//! parsed. Must not: check relations between settings (that is
//! [`RendererConfig::validate`]) or apply flags.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::{ConfigError, Problem, RendererConfig};

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
