//! The flags of `pug render`.
//!
//! Owns: [`RenderArgs`] and how each flag overrides what [`RendererConfig::from_env`] read.
//!
//! Must not: read the environment itself or start anything.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{ConfigError, Problem, RendererConfig};
use crate::params::Encoding;

/// Flags of `pug render`; each overrides the matching environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RenderArgs {
    /// Listen address, e.g. `:8081` or `127.0.0.1:8081` (env: SERVER_ADDR, HTTP_HOST + HTTP_PORT).
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen_addr)]
    pub addr: Option<SocketAddr>,
    /// Chromium binary (env: BROWSER_PATH, CHROME_BIN).
    #[arg(long, value_name = "PATH")]
    pub chrome: Option<PathBuf>,
    /// Extra Chromium flag; repeatable. Replaces RENDERING_ARGS when given.
    #[arg(long = "chrome-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub chrome_args: Vec<String>,
    /// Accepted X-Auth-Token; repeatable (env: AUTH_TOKEN). Prefer the environment: flags show in `ps`.
    #[arg(long = "auth-token", value_name = "TOKEN")]
    pub auth_tokens: Vec<String>,
    /// Host or host:port that may be rendered; repeatable. Without any, every host may be rendered
    /// except link-local and cloud-metadata addresses.
    #[arg(long = "allowed-host", value_name = "HOST[:PORT]")]
    pub allowed_hosts: Vec<String>,
    /// Renders at once (env: RENDERING_CLUSTERING_MAX_CONCURRENCY).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,
    /// Renders that may wait for a slot before requests get 429.
    #[arg(long, value_name = "N")]
    pub max_queue: Option<usize>,
    /// Accept invalid TLS certificates of rendered sites (env: IGNORE_HTTPS_ERRORS).
    #[arg(long)]
    pub ignore_https_errors: bool,
    /// Default browser timezone (env: BROWSER_TZ, TZ).
    #[arg(long, value_name = "TZ")]
    pub timezone: Option<String>,
    /// Replace Chromium after this many renders (0 = never).
    #[arg(long, value_name = "N")]
    pub renders_per_browser: Option<u64>,
    /// Replace Chromium when its processes use more than this many MiB (0 = never).
    #[arg(long, value_name = "MIB")]
    pub max_browser_rss_mb: Option<u64>,
    /// Renders one browser page serves, wiped between them, before it is closed; 1 = a fresh
    /// incognito context for every render (env: PUG_RENDERER_PAGE_REUSE).
    #[arg(long, value_name = "N")]
    pub page_reuse: Option<u32>,
    /// Encoding of /render when a request names none: png or pdf.
    #[arg(long, value_name = "ENCODING")]
    pub default_encoding: Option<String>,
    /// Directory for Chromium's throw-away profiles and downloads.
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    /// Do not serve /metrics (env: ENABLE_METRICS=false).
    #[arg(long)]
    pub disable_metrics: bool,
    /// Render for pug's tenants: read their tokens' digests and instances from this URL of
    /// pug's API (`…/api/v1/renderer/tenants`) every second, instead of AUTH_TOKEN. pug sets
    /// this for the swarm renderer service it manages.
    #[arg(long, value_name = "URL", requires = "tenants_token_file")]
    pub tenants_url: Option<String>,
    /// The file holding the credential for --tenants-url (a swarm secret pug mounts).
    #[arg(long, value_name = "PATH", requires = "tenants_url")]
    pub tenants_token_file: Option<PathBuf>,
}

impl RenderArgs {
    /// Applies the flags that were given on top of `config`, then validates the result.
    pub fn apply(&self, config: &mut RendererConfig) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Some(addr) = self.addr {
            config.addr = addr;
        }
        if let Some(chrome) = &self.chrome {
            config.chrome_path = chrome.clone();
        }
        if !self.chrome_args.is_empty() {
            config.chrome_args = self.chrome_args.clone();
        }
        if !self.auth_tokens.is_empty() {
            config.auth_tokens = self.auth_tokens.clone();
        }
        if !self.allowed_hosts.is_empty() {
            config.allowed_hosts = self.allowed_hosts.clone();
        }
        if let Some(n) = self.max_concurrency {
            if n == 0 {
                problems.push(problem("--max-concurrency", "0", "must be at least 1"));
            } else {
                config.max_concurrency = n;
            }
        }
        if let Some(n) = self.max_queue {
            config.max_queue = n;
        }
        if self.ignore_https_errors {
            config.ignore_https_errors = true;
        }
        if let Some(tz) = &self.timezone {
            match crate::params::parse_timezone(tz) {
                Some(tz) => config.browser_timezone = tz,
                None => problems.push(problem("--timezone", tz, "expected an IANA timezone name")),
            }
        }
        if let Some(n) = self.renders_per_browser {
            config.renders_per_browser = n;
        }
        if let Some(mib) = self.max_browser_rss_mb {
            config.max_browser_rss_bytes = mib << 20;
        }
        if let Some(n) = self.page_reuse {
            match n {
                0 => problems.push(problem(
                    "--page-reuse",
                    "0",
                    "expected 1 or more (1 = a fresh context for every render)",
                )),
                n => config.page_reuse = n,
            }
        }
        if let Some(enc) = &self.default_encoding {
            match enc.as_str() {
                "png" => config.default_encoding = Encoding::Png,
                "pdf" => config.default_encoding = Encoding::Pdf,
                _ => problems.push(problem("--default-encoding", enc, "expected png or pdf")),
            }
        }
        if let Some(dir) = &self.temp_dir {
            config.temp_dir = Some(dir.clone());
        }
        if self.disable_metrics {
            config.metrics_enabled = false;
        }
        if let Some(url) = &self.tenants_url {
            if !self.auth_tokens.is_empty() {
                problems.push(problem(
                    "--auth-token",
                    "",
                    "--tenants-url renders for pug's tenants' tokens only; leave out --auth-token",
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(problem(
                    "--tenants-url",
                    url,
                    "expected an http(s) URL of pug's API, e.g. http://pug:8080/api/v1/renderer/tenants",
                ));
            }
        }
        if let Err(ConfigError::Invalid(more)) = config.validate_standalone() {
            problems.extend(more);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

fn problem(name: &str, value: &str, reason: &str) -> Problem {
    Problem {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RenderArgs,
    }

    #[test]
    fn flags_override_the_environment() {
        let mut config =
            RendererConfig::from_vars([("HTTP_PORT", "9000"), ("AUTH_TOKEN", "env")]).unwrap();
        let cli = Cli::parse_from([
            "pug-render",
            "--addr",
            "127.0.0.1:7000",
            "--auth-token",
            "a",
            "--auth-token",
            "b",
            "--allowed-host",
            "grafana:3000",
            "--chrome-arg",
            "--disable-gpu",
            "--default-encoding",
            "png",
        ]);
        cli.args.apply(&mut config).unwrap();
        assert_eq!(config.addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.auth_tokens, vec!["a", "b"]);
        assert_eq!(config.allowed_hosts, vec!["grafana:3000"]);
        assert_eq!(config.chrome_args, vec!["--disable-gpu"]);
        assert_eq!(config.default_encoding, Encoding::Png);
    }

    #[test]
    fn tenants_mode_takes_a_url_and_a_credential_file_and_no_static_token() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("pug-render").chain(args.iter().copied()))
        };
        assert!(
            parse(&["--tenants-url", "http://pug:8080/api/v1/renderer/tenants"]).is_err(),
            "a URL needs its credential file"
        );
        let cli = parse(&[
            "--tenants-url",
            "http://pug:8080/api/v1/renderer/tenants",
            "--tenants-token-file",
            "/run/secrets/c",
        ])
        .unwrap();
        cli.args.apply(&mut RendererConfig::default()).unwrap();
        for (args, wrong) in [
            (
                &["--tenants-url", "pug:8080", "--tenants-token-file", "/c"][..],
                "--tenants-url",
            ),
            (
                &[
                    "--tenants-url",
                    "http://pug/",
                    "--tenants-token-file",
                    "/c",
                    "--auth-token",
                    "x",
                ][..],
                "--auth-token",
            ),
        ] {
            let err = parse(args)
                .unwrap()
                .args
                .apply(&mut RendererConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(wrong), "{args:?}: {err}");
        }
    }

    #[test]
    fn invalid_flags_are_all_reported() {
        let mut config = RendererConfig::default();
        let cli = Cli::parse_from([
            "pug-render",
            "--max-concurrency",
            "0",
            "--default-encoding",
            "gif",
            "--allowed-host",
            "http://x/",
        ]);
        let err = cli.args.apply(&mut config).unwrap_err().to_string();
        for name in ["--max-concurrency", "--default-encoding", "allowed-host"] {
            assert!(err.contains(name), "{name} missing: {err}");
        }
    }
}
