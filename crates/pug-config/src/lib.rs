//! pug's configuration.
//!
//! Owns: the [`Config`] type, its defaults (so that `pug serve` runs with no configuration at
//! all: SQLite and the process backend under `./pug-data`), and loading it from, in rising
//! precedence, the defaults, a TOML file, `PUG_*` environment variables and command-line flags.
//!
//! Every setting `a.b_c` has the environment variable `PUG_A_B_C` (e.g. `process.grafana_bin` is
//! `PUG_PROCESS_GRAFANA_BIN`). The names are derived from the defaults, so a new setting gets its
//! variable without anyone writing it down, and an unknown `PUG_*` variable is simply not a setting.
//!
//! Must not: read anything but its inputs, or act on the configuration.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod sections;

pub use sections::*;

/// Environment variables that start with `PUG_` but are not settings: the CLI's own, and secrets
/// that are read where they are used.
pub const NON_SETTING_VARS: &[&str] = &["PUG_URL", "PUG_TOKEN", "PUG_CONFIG", "PUG_MASTER_KEY"];

/// The whole configuration of a pug process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where pug keeps its database, master key, tenants' data and downloaded Grafana releases.
    pub data_dir: PathBuf,
    /// The address of the API, the gateway and `/metrics` (one port).
    pub listen: SocketAddr,
    /// Which orchestrator runs tenants' instances.
    pub backend: Backend,
    /// The store's database URL. Empty: SQLite at `<data_dir>/pug.db`.
    pub database_url: String,
    pub gateway: GatewayConfig,
    pub process: ProcessConfig,
    pub controller: ControllerConfig,
    pub grafana: GrafanaConfig,
    pub grafana_database: GrafanaDatabaseConfig,
    pub docker: DockerConfig,
    pub renderer: RendererConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./pug-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backend: Backend::Process,
            database_url: String::new(),
            gateway: GatewayConfig::default(),
            process: ProcessConfig::default(),
            controller: ControllerConfig::default(),
            grafana: GrafanaConfig::default(),
            grafana_database: GrafanaDatabaseConfig::default(),
            docker: DockerConfig::default(),
            renderer: RendererConfig::default(),
        }
    }
}

/// The configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist; create it or leave out --config")]
    Missing { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// The URL tenants' Grafana call the embedded renderer at (`rendering.server_url`): the
    /// renderer's listen address, with a wildcard address replaced by loopback.
    pub fn renderer_url(&self) -> String {
        let mut addr = self.renderer.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/render")
    }

    /// Loads defaults < `file` (or `./pug.toml` if it exists) < `PUG_*` variables < `flags`.
    ///
    /// `flags` holds only the settings given on the command line, as dotted keys.
    pub fn load(
        file: Option<&Path>,
        flags: BTreeMap<String, serde_json::Value>,
    ) -> Result<Self, ConfigError> {
        Self::figment(file, flags)?
            .extract::<Config>()
            // figment keeps every error it met; say them all, not just the first.
            .map_err(|e| {
                ConfigError::Invalid(
                    e.into_iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })
            .and_then(Config::validated)
    }

    fn figment(
        file: Option<&Path>,
        flags: BTreeMap<String, serde_json::Value>,
    ) -> Result<Figment, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::Missing {
                    path: path.to_owned(),
                })
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file("pug.toml")),
        }
        let by_env = env_names();
        figment = figment.merge(Env::prefixed("").filter_map(move |key| {
            by_env
                .get(key.as_str().to_ascii_uppercase().as_str())
                .map(|dotted| dotted.clone().into())
        }));
        for (key, value) in flags {
            figment = figment.merge(Serialized::default(&key, value));
        }
        Ok(figment)
    }

    /// The configuration, or every problem it has at once (one per setting), so that a
    /// person fixes them in one go rather than one restart at a time.
    fn validated(self) -> Result<Self, ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    /// What is wrong with the values (each message names the setting and a valid value).
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut bad = |m: String| problems.push(m);
        for (name, url) in [
            ("process.download_base_url", &self.process.download_base_url),
            ("process.checksum_base_url", &self.process.checksum_base_url),
        ] {
            let allowed = url.is_empty()
                || url.starts_with("https://")
                || (url.starts_with("http://") && self.process.allow_insecure_download);
            if !allowed {
                bad(format!(
                    "{name} ({url}) must be an https:// URL; http:// needs \
                     process.allow_insecure_download = true"
                ));
            }
        }
        if self.process.max_download_mb == 0 {
            bad("process.max_download_mb must be at least 1".into());
        }
        if self.process.port_min == 0 || self.process.port_min > self.process.port_max {
            bad(format!(
                "process.port_min ({}) must be at least 1 and at most process.port_max ({})",
                self.process.port_min, self.process.port_max
            ));
        }
        let p = &self.process;
        if p.tenant_uid_base < 1000
            || p.tenant_uid_count == 0
            || p.tenant_uid_base.checked_add(p.tenant_uid_count).is_none()
        {
            bad(format!(
                "process.tenant_uid_base ({}) must be at least 1000 and process.tenant_uid_count ({}) at least 1, \
                 with their sum below 4294967296 (e.g. 200000 and 100000)",
                p.tenant_uid_base, p.tenant_uid_count
            ));
        }
        if !self.docker.image.contains("{version}") {
            bad(format!(
                "docker.image {:?} has no {{version}} placeholder; give one like \"grafana/grafana:{{version}}\"",
                self.docker.image
            ));
        }
        let ns = &self.docker.namespace;
        if ns.is_empty()
            || ns.len() > 20
            || !ns.starts_with(|c: char| c.is_ascii_lowercase())
            || !ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            bad(format!(
                "docker.namespace {ns:?} must be 1 to 20 lowercase letters or digits, starting with a letter (e.g. \"pug\")"
            ));
        }
        if self.docker.max_concurrent_ops == 0 || self.docker.update_parallelism == 0 {
            bad(
                "docker.max_concurrent_ops and docker.update_parallelism must be at least 1".into(),
            );
        }
        let g = &self.gateway;
        if g.connect_timeout_secs == 0
            || g.response_timeout_secs == 0
            || g.session_ttl_secs == 0
            || g.embed_session_ttl_secs == 0
            || g.login_window_secs == 0
            || g.login_failures_per_user == 0
            || g.login_failures_per_address == 0
            || g.session_sweep_interval_secs == 0
            || g.max_connections_per_client == 0
            || g.header_read_timeout_secs == 0
            || g.http2_keep_alive_secs == 0
            || g.tunnel_idle_timeout_secs == 0
        {
            bad(
                "gateway timeouts, session lifetimes, the login window, the login failure limits, gateway.session_sweep_interval_secs and gateway.max_connections_per_client must be at least 1".into(),
            );
        }
        for p in &g.trusted_proxies {
            if p.parse::<std::net::IpAddr>().is_err() && p.parse::<ipnet::IpNet>().is_err() {
                bad(format!(
                    "gateway.trusted_proxies entry {p:?} is not an address or CIDR; give e.g. \"10.0.0.5\" or \"10.0.0.0/8\""
                ));
            }
        }
        if self.renderer.max_concurrency == 0 {
            bad("renderer.max_concurrency must be at least 1".into());
        }
        if self.renderer.page_reuse == 0 {
            bad(
                "renderer.page_reuse must be at least 1 (1 = a fresh browser context for every render)"
                    .into(),
            );
        }
        if self.renderer.mode != RendererMode::Off && self.renderer.listen == self.listen {
            bad(format!(
                "renderer.listen and listen are both {}; give the renderer its own port (default 127.0.0.1:8081) or set renderer.mode = \"off\"",
                self.listen
            ));
        }
        for p in self.renderer_swarm_problems() {
            bad(p);
        }
        if self.controller.concurrency == 0 {
            bad("controller.concurrency must be at least 1".into());
        }
        if self.controller.lease_ms < 300 {
            bad("controller.lease_ms must be at least 300 (milliseconds)".into());
        }
        if !self.gateway.public_url.is_empty() {
            match url::Url::parse(&self.gateway.public_url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => {
                    bad(format!(
                        "gateway.public_url {:?} is not an http(s) URL; give one like https://grafana.example.com",
                        self.gateway.public_url
                    ))
                }
            }
        }
        if self.gateway.mode == GatewayMode::Host && self.gateway.domain.is_empty() {
            bad(
                "gateway.mode = \"host\" needs gateway.domain (e.g. \"grafana.example.com\")"
                    .into(),
            );
        }
        if !self.grafana_database.url.is_empty()
            && !self.grafana_database.url.starts_with("postgres://")
            && !self.grafana_database.url.starts_with("postgresql://")
        {
            bad("grafana_database.url must be a postgres:// URL".into());
        }
        problems
    }

    /// What is wrong with `[renderer.swarm]` (each message names the setting and a fix).
    fn renderer_swarm_problems(&self) -> Vec<String> {
        let s = &self.renderer.swarm;
        let mut problems = Vec::new();
        if s.replicas == 0 {
            return problems;
        }
        if s.replicas > MAX_RENDERER_REPLICAS {
            problems.push(format!(
                "renderer.swarm.replicas ({}) must be at most {MAX_RENDERER_REPLICAS}",
                s.replicas
            ));
        }
        if self.backend != Backend::Swarm {
            problems.push(format!(
                "renderer.swarm.replicas ({}) is a swarm backend setting, and backend is {:?}; \
                 set backend = \"swarm\" or renderer.swarm.replicas = 0",
                s.replicas,
                self.backend.as_str()
            ));
        }
        if s.image.trim().is_empty() {
            problems.push(format!(
                "renderer.swarm.replicas ({}) needs renderer.swarm.image (PUG_RENDERER_SWARM_IMAGE): \
                 an image whose entrypoint is pug and that has Chromium, e.g. built from \
                 deploy/renderer/Dockerfile and pushed where every node can pull it",
                s.replicas
            ));
        }
        if self.renderer.mode == RendererMode::Off {
            problems.push(
                "renderer.swarm.replicas ≥ 1 runs a renderer service, and renderer.mode is \"off\"; \
                 set renderer.mode = \"auto\" or renderer.swarm.replicas = 0"
                    .into(),
            );
        }
        if !s.pug_url.is_empty() {
            match url::Url::parse(&s.pug_url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => problems.push(format!(
                    "renderer.swarm.pug_url {:?} is not an http(s) URL; give one like http://tasks.pug_pug:8080",
                    s.pug_url
                )),
            }
        } else if self.listen.ip().is_loopback() {
            problems.push(format!(
                "renderer.swarm.replicas ≥ 1: the renderer service reads its token table from pug's \
                 API over the overlay, and listen ({}) is loopback; set listen = \"0.0.0.0:{}\", or \
                 renderer.swarm.pug_url to a URL of pug's API the service reaches",
                self.listen,
                self.listen.port()
            ));
        }
        problems
    }

    /// The URL people use to reach pug, without a trailing slash.
    pub fn public_url(&self) -> String {
        if self.gateway.public_url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.gateway.public_url.trim_end_matches('/').to_owned()
        }
    }

    /// The public URL of one tenant's Grafana, ending in `/` (its `root_url`).
    pub fn tenant_url(&self, tenant: &str) -> String {
        match self.gateway.mode {
            GatewayMode::Path => format!("{}/t/{tenant}/", self.public_url()),
            GatewayMode::Host => {
                let scheme = if self.public_url().starts_with("https:") {
                    "https"
                } else {
                    "http"
                };
                let port = url::Url::parse(&self.public_url())
                    .ok()
                    .and_then(|u| u.port())
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default();
                format!("{scheme}://{tenant}.{}{port}/", self.gateway.domain)
            }
        }
    }

    /// The store's database URL.
    pub fn store_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("pug.db").display())
        } else {
            self.database_url.clone()
        }
    }
}

/// `PUG_A_B_C` → `a.b_c` for every setting, derived from the defaults.
pub fn env_names() -> BTreeMap<String, String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => {
                let env = format!("PUG_{}", prefix.replace('.', "_").to_ascii_uppercase());
                out.insert(env, prefix.to_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
    walk("", &defaults, &mut out);
    out
}

#[cfg(test)]
mod tests;
