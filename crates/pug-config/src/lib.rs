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

/// Which orchestrator runs tenants' instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Child processes of pug on this machine.
    Process,
    /// Containers on one Docker engine.
    Docker,
    /// Docker Swarm services.
    Swarm,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Docker => "docker",
            Backend::Swarm => "swarm",
        }
    }
}

/// How people reach tenants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The URL people use to reach pug, e.g. `https://grafana.example.com` behind a TLS
    /// terminator. Empty: `http://<listen>`.
    pub public_url: String,
    /// `path` (`/t/<tenant>/`) or `host` (`<tenant>.<domain>`).
    pub mode: GatewayMode,
    /// The parent domain in host mode.
    pub domain: String,
    /// How long connecting to an instance may take before the request is retried on another
    /// replica (idempotent requests) or fails with 502.
    pub connect_timeout_secs: u64,
    /// How long an instance may take to start answering a request (504 after that).
    pub response_timeout_secs: u64,
    /// How long a signed-in session lasts.
    pub session_ttl_secs: u64,
    /// How long a session started by an embed token lasts.
    pub embed_session_ttl_secs: u64,
    /// Failed sign-ins allowed per user within `login_window_secs`, then 429.
    pub login_failures_per_user: u32,
    /// Failed sign-ins allowed per client address within `login_window_secs`, then 429.
    pub login_failures_per_address: u32,
    pub login_window_secs: u64,
    /// Threads serving pug's port (gateway and API), each an event loop that owns its
    /// connections; 0: one per CPU core.
    pub workers: usize,
    /// How often the gateway deletes expired sessions, embed sessions whose key or tenant is
    /// gone, and expired embed token ids.
    pub session_sweep_interval_secs: u64,
    /// Addresses or CIDRs of proxies (the TLS terminator) whose `X-Forwarded-For` is believed:
    /// the client is the right-most address in it that is not one of these. Empty: the TCP peer
    /// is the client.
    pub trusted_proxies: Vec<String>,
    /// Password checks running at once, across all workers; more sign-ins at that moment are
    /// answered 503 with `Retry-After` (each check is an argon2 hash of 19 MiB). 0: one per
    /// CPU core.
    pub login_concurrency: usize,
    /// Open connections on pug's port at most (further ones are closed at once); also kept
    /// below the process's open-file limit. 0: derived from that limit alone.
    pub max_connections: usize,
    /// Open connections per client address (an IPv6 /64 counts as one address) at most.
    pub max_connections_per_client: usize,
    /// How long a client may take to send a request's headers, and how long an HTTP/1
    /// connection may stay idle between requests, before pug closes it.
    pub header_read_timeout_secs: u64,
    /// HTTP/2 keep-alive: ping an idle connection this often and close it if the ping is not
    /// answered within as long again.
    pub http2_keep_alive_secs: u64,
    /// A WebSocket tunnel (Grafana Live) with no traffic either way for this long is closed.
    pub tunnel_idle_timeout_secs: u64,
    /// How long a request to a sleeping tenant is held while it wakes, before it is answered
    /// 503 with `Retry-After` (a browser gets a page that waits by itself instead).
    pub wake_timeout_secs: u64,
}

/// Routing mode of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    Path,
    Host,
}

/// The process backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessConfig {
    /// A `grafana` executable used for every version. Empty: pug uses `<data_dir>/grafana/<version>/`,
    /// downloading the release there when missing.
    pub grafana_bin: String,
    /// Where Grafana's release tarballs are downloaded from
    /// (`<base>/grafana-<version>.linux-amd64.tar.gz` and its `.sha256`).
    pub download_base_url: String,
    /// Accept `http://` for `download_base_url` and `checksum_base_url` (and redirects to
    /// `http://`). Off by default: a release fetched without TLS can be swapped on the way,
    /// checksum included.
    pub allow_insecure_download: bool,
    /// Where the releases' `.sha256` files are fetched from (`<base>/grafana-<version>.linux-amd64.tar.gz.sha256`).
    /// Empty (the default): `download_base_url`, i.e. the same origin as the tarball, over
    /// https; set it to a source you control (a mirror of checksums you verified) so that one
    /// compromised download host cannot supply both the tarball and its checksum.
    pub checksum_base_url: String,
    /// The largest release tarball pug downloads, in MiB (its unpacked size may be 8 times this).
    pub max_download_mb: u64,
    /// The address instances listen on.
    pub bind_address: String,
    /// The first port pug allocates to instances.
    pub port_min: u16,
    /// The last port pug allocates to instances.
    pub port_max: u16,
    /// Stop every instance when `pug serve` exits. Off by default: instances keep serving while
    /// pug restarts, and the next `pug serve` adopts them.
    pub stop_on_exit: bool,
    /// Whether tenants are isolated from each other and from pug: `auto` (when pug runs as root
    /// and `iptables` works: each tenant's Grafana runs as a user id of its own, and only pug's
    /// user may connect to instance ports; otherwise pug says so at start and serves mutually
    /// trusting tenants only), `required` (refuse to start without it) or `off`.
    pub isolation: IsolationMode,
    /// The first numeric user and group id given to a tenant's instances (no `/etc/passwd`
    /// entry is needed; pick a range no other user of this machine has).
    pub tenant_uid_base: u32,
    /// How many ids from `tenant_uid_base` on pug may give out (one per tenant).
    pub tenant_uid_count: u32,
}

/// Whether the process backend isolates tenants (`process.isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    Auto,
    Required,
    Off,
}

/// The renderer `pug serve` embeds, which every tenant's Grafana is wired to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RendererConfig {
    /// `auto` (start it when Chromium is found, else run without rendering and say so), `on`
    /// (refuse to start without it) or `off`.
    pub mode: RendererMode,
    /// Where the renderer's own API listens; tenants' Grafana reach it here. It has its own
    /// port because Grafana calls it directly, not through the gateway.
    pub listen: SocketAddr,
    /// The Chromium executable (a name on `PATH` or a path). Empty (the default): the first
    /// installed of the renderer's candidates, Chromium's headless shell before Chromium (see
    /// `pug_renderer::config::BROWSER_CANDIDATES`).
    pub chrome_path: String,
    /// Renders running at once.
    pub max_concurrency: usize,
    /// Renders waiting for a slot before requests get 429.
    pub max_queue: usize,
    /// Chromium is replaced after this many renders (0: never).
    pub renders_per_browser: u64,
    /// Chromium is replaced when its processes use more resident memory than this, in MiB (0: never).
    pub max_browser_rss_mb: u64,
    /// Renders one browser page serves before it is closed (default 50): a page is reused for
    /// renders of the same tenant, wiped between them (see the renderer's `page_reuse`); 1,
    /// the strict option, gives every render a fresh incognito context.
    pub page_reuse: u32,
    /// Runs Chromium with `--no-sandbox` (pug warns at start). Only for kernels or containers
    /// that give no user namespaces (Docker's default seccomp profile, for one).
    pub no_sandbox: bool,
}

/// The uid (and gid) the renderer's Chromium runs as when pug runs as root: a user of its own,
/// below the process backend's default tenant uids (200000…). It connects to nothing itself:
/// every connection goes through the renderer's proxy, which runs as pug (so the process
/// backend's firewall, which lets only pug's user reach instance ports, also keeps a
/// compromised browser from bypassing the proxy).
pub const DEFAULT_BROWSER_UID: u32 = 199_999;

/// Whether `pug serve` runs its renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RendererMode {
    Auto,
    On,
    Off,
}

impl Default for RendererConfig {
    fn default() -> Self {
        Self {
            mode: RendererMode::Auto,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            chrome_path: String::new(),
            max_concurrency: 5,
            max_queue: 50,
            renders_per_browser: 1000,
            max_browser_rss_mb: 2048,
            page_reuse: 50,
            no_sandbox: false,
        }
    }
}

/// The docker and swarm backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// The engine's address: empty for the local default (`DOCKER_HOST` or the Unix socket),
    /// `unix:///path`, or `tcp://host:port`.
    pub host: String,
    /// Prefix of the names of pug's containers, services and volumes, and the value of their
    /// `pug.namespace` label. pugs with different namespaces share an engine without seeing
    /// (or garbage-collecting) each other's tenants.
    pub namespace: String,
    /// The image of a Grafana version; `{version}` is replaced by the tenant's version. Point it
    /// at your registry to run images with plugins baked in.
    pub image: String,
    /// The network tenants' containers join (a bridge for docker, an overlay for swarm); pug
    /// creates it when missing.
    pub network: String,
    /// Memory limit of one replica, in MiB (0: none).
    pub memory_mb: u64,
    /// CPU limit of one replica, in CPUs (0: none).
    pub cpus: f64,
    /// Addresses (or CIDR networks) Grafana accepts auth-proxy headers from. Empty: docker —
    /// the bridge network's gateway address, where pug on the host connects from; swarm —
    /// pug's own address on the overlay network (pug runs in a container attached to it).
    pub proxy_whitelist: Vec<String>,
    /// Swarm: tasks of one service updated at once.
    pub update_parallelism: u64,
    /// Swarm: how long a new task is watched for failure before the update moves on, in seconds.
    pub update_monitor_secs: u64,
    /// The container health check; `{port}` and `{path}` (the tenant's root path, ending in
    /// `/`) are filled in. The default suits grafana/grafana images, which have `wget`.
    pub healthcheck: Vec<String>,
    /// Containers and services labelled as pug's but unknown to the store are removed only after
    /// they have existed this long, in seconds.
    pub orphan_grace_secs: u64,
    /// The most container operations (create, start, remove, update) in flight at once.
    pub max_concurrent_ops: usize,
}

/// The reconciler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// The most reconcile operations running at once, fleet-wide.
    pub concurrency: usize,
    /// Every tenant is reconciled at least this often, even with nothing changed.
    pub resync_interval_secs: u64,
    /// How long a new or upgraded replica may take to become healthy before it counts as failed.
    pub ready_timeout_secs: u64,
    /// The longest wait between retries of a failing tenant.
    pub max_backoff_secs: u64,
    /// How often a not-yet-ready tenant is polled for readiness, in milliseconds.
    pub readiness_poll_ms: u64,
    /// A replica that exits this many times in a row without becoming healthy marks its tenant failed.
    pub crash_loop_threshold: u32,
    /// Seconds without activity (a request through the gateway, an open WebSocket) after which
    /// a tenant sleeps: its instances stop, its data stays, and its next request wakes it.
    /// 0: tenants never sleep. A tenant's own `idle_timeout_secs` overrides it.
    pub idle_timeout_secs: u64,
    /// How often a tenant whose wake is pending is polled for readiness, in milliseconds.
    pub wake_poll_ms: u64,
    /// How long a pug's lease of a tenant's work (and of the fleet-wide jobs) lasts unless
    /// renewed, in milliseconds; renewed every third of it. When several pugs share one
    /// PostgreSQL, a killed pug's work is taken over within about this long plus half a second.
    pub lease_ms: u64,
    /// Accept tenant settings and provisioning values that Grafana expands (`$__file{…}`,
    /// `$__env{…}`, `$__vault{…}`, `${VAR}`, `$VAR`). Off by default: they would let a tenant
    /// read files and environment variables of the machine or container its Grafana runs on.
    pub allow_setting_expansion: bool,
}

/// Which Grafana versions tenants may ask for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrafanaConfig {
    /// If not empty, only these versions are accepted.
    pub allowed_versions: Vec<String>,
    /// Whether Grafana's plugin preinstaller may fetch plugins from grafana.com on start.
    pub plugin_preinstall: bool,
    /// `host:port` entries every tenant's datasource proxy may reach (Grafana's
    /// `security.data_source_proxy_whitelist`). Empty (the default): Grafana allows every host.
    pub data_source_proxy_whitelist: Vec<String>,
}

/// A PostgreSQL server on which pug creates a database per tenant (required for replicas > 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrafanaDatabaseConfig {
    /// `postgres://user:password@host:port/dbname` of a role allowed to create roles and databases.
    /// Empty: every tenant uses SQLite in its own data directory.
    pub url: String,
    /// `ssl_mode` Grafana uses to reach it.
    pub ssl_mode: String,
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

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            namespace: "pug".into(),
            image: "grafana/grafana:{version}".into(),
            network: "pug".into(),
            memory_mb: 512,
            cpus: 1.0,
            proxy_whitelist: Vec::new(),
            update_parallelism: 1,
            update_monitor_secs: 15,
            healthcheck: vec![
                "CMD-SHELL".into(),
                "wget -q -O /dev/null http://127.0.0.1:{port}{path}api/health || exit 1".into(),
            ],
            orphan_grace_secs: 60,
            max_concurrent_ops: 8,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            public_url: String::new(),
            mode: GatewayMode::Path,
            domain: String::new(),
            connect_timeout_secs: 3,
            response_timeout_secs: 300,
            session_ttl_secs: 12 * 3600,
            embed_session_ttl_secs: 8 * 3600,
            login_failures_per_user: 5,
            login_failures_per_address: 20,
            login_window_secs: 15 * 60,
            workers: 0,
            session_sweep_interval_secs: 300,
            trusted_proxies: Vec::new(),
            login_concurrency: 0,
            max_connections: 0,
            max_connections_per_client: 256,
            header_read_timeout_secs: 30,
            http2_keep_alive_secs: 30,
            tunnel_idle_timeout_secs: 3600,
            wake_timeout_secs: 60,
        }
    }
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            grafana_bin: String::new(),
            download_base_url: "https://dl.grafana.com/oss/release".into(),
            allow_insecure_download: false,
            checksum_base_url: String::new(),
            max_download_mb: 1024,
            bind_address: "127.0.0.1".into(),
            port_min: 20000,
            port_max: 29999,
            stop_on_exit: false,
            isolation: IsolationMode::Auto,
            tenant_uid_base: 200_000,
            tenant_uid_count: 100_000,
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            resync_interval_secs: 30,
            ready_timeout_secs: 120,
            max_backoff_secs: 300,
            readiness_poll_ms: 200,
            crash_loop_threshold: 3,
            idle_timeout_secs: 0,
            wake_poll_ms: 25,
            lease_ms: 3000,
            allow_setting_expansion: false,
        }
    }
}

impl Default for GrafanaDatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            ssl_mode: "disable".into(),
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
// figment::Jail closures return figment::Error, which is large; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn zero_configuration_is_valid() {
        figment::Jail::expect_with(|_| {
            let c = Config::load(None, BTreeMap::new()).unwrap();
            assert_eq!(c, Config::default());
            assert_eq!(c.public_url(), "http://127.0.0.1:8080");
            assert_eq!(c.tenant_url("acme"), "http://127.0.0.1:8080/t/acme/");
            Ok(())
        });
    }

    #[test]
    fn renderer_section() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PUG_RENDERER_MODE", "off");
            jail.set_env("PUG_RENDERER_LISTEN", "0.0.0.0:9081");
            let c = Config::load(None, BTreeMap::new()).unwrap();
            assert_eq!(c.renderer.mode, RendererMode::Off);
            assert_eq!(c.renderer_url(), "http://127.0.0.1:9081/render");
            jail.set_env("PUG_RENDERER_MODE", "on");
            jail.set_env("PUG_RENDERER_LISTEN", "127.0.0.1:8080");
            let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
            assert!(err.contains("its own port"), "{err}");
            jail.set_env("PUG_RENDERER_MODE", "sometimes");
            assert!(Config::load(None, BTreeMap::new()).is_err());
            jail.set_env("PUG_RENDERER_MODE", "off");
            jail.set_env("PUG_RENDERER_PAGE_REUSE", "50");
            assert_eq!(
                Config::load(None, BTreeMap::new())
                    .unwrap()
                    .renderer
                    .page_reuse,
                50
            );
            jail.set_env("PUG_RENDERER_PAGE_REUSE", "0");
            let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
            assert!(
                err.contains("renderer.page_reuse must be at least 1"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pug.toml",
                "listen = \"127.0.0.1:9000\"\n[process]\ngrafana_bin = \"/from/file\"\nport_min = 30000\nport_max = 30100\n",
            )?;
            jail.set_env("PUG_PROCESS_GRAFANA_BIN", "/from/env");
            jail.set_env("PUG_URL", "http://ignored");
            let mut flags = BTreeMap::new();
            flags.insert("listen".to_owned(), serde_json::json!("127.0.0.1:9100"));
            let c = Config::load(None, flags).unwrap();
            assert_eq!(c.process.grafana_bin, "/from/env");
            assert_eq!(c.process.port_min, 30000);
            assert_eq!(c.listen.port(), 9100);
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_explained() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("pug.toml", "[gateway]\nmode = \"host\"\n")?;
            let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
            assert!(err.contains("gateway.domain"), "{err}");
            jail.create_file("pug.toml", "bogus = 1\n")?;
            let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
            assert!(err.contains("bogus"), "{err}");
            // Every problem at once, not one per restart.
            jail.create_file(
                "pug.toml",
                "[controller]\nconcurrency = 0\n[docker]\nimage = \"grafana\"\n[gateway]\nmode = \"host\"\n",
            )?;
            let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
            for setting in ["controller.concurrency", "docker.image", "gateway.domain"] {
                assert!(err.contains(setting), "{setting} missing from: {err}");
            }
            Ok(())
        });
        let err = Config::load(Some(Path::new("/nonexistent/pug.toml")), BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"));
    }

    #[test]
    fn every_setting_has_an_env_name() {
        let names = env_names();
        assert_eq!(names["PUG_PROCESS_GRAFANA_BIN"], "process.grafana_bin");
        assert_eq!(names["PUG_GRAFANA_DATABASE_URL"], "grafana_database.url");
        assert_eq!(names["PUG_DATA_DIR"], "data_dir");
    }

    #[test]
    fn process_isolation_settings() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, BTreeMap::new()).unwrap();
            assert_eq!(c.process.isolation, IsolationMode::Auto);
            jail.set_env("PUG_PROCESS_ISOLATION", "required");
            jail.set_env("PUG_PROCESS_TENANT_UID_BASE", "300000");
            let c = Config::load(None, BTreeMap::new()).unwrap();
            assert_eq!(c.process.isolation, IsolationMode::Required);
            assert_eq!(c.process.tenant_uid_base, 300_000);
            jail.set_env("PUG_PROCESS_ISOLATION", "maybe");
            assert!(Config::load(None, BTreeMap::new()).is_err());
            jail.set_env("PUG_PROCESS_ISOLATION", "off");
            for (base, count) in [
                ("0", "10"),
                ("999", "10"),
                ("4294967000", "1000"),
                ("200000", "0"),
            ] {
                jail.set_env("PUG_PROCESS_TENANT_UID_BASE", base);
                jail.set_env("PUG_PROCESS_TENANT_UID_COUNT", count);
                let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
                assert!(
                    err.contains("process.tenant_uid_base"),
                    "{base} {count}: {err}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn docker_image_needs_a_version_placeholder() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("pug.toml", "[docker]\nimage = \"grafana/grafana:latest\"\n")?;
            let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
            assert!(err.contains("{version}"), "{err}");
            jail.create_file(
                "pug.toml",
                "backend = \"swarm\"\n[docker]\nimage = \"registry.example.com/grafana:{version}\"\n",
            )?;
            let c = Config::load(None, BTreeMap::new()).unwrap();
            assert_eq!(c.backend, Backend::Swarm);
            jail.create_file("pug.toml", "[docker]\nnamespace = \"Bad_Name\"\n")?;
            let err = Config::load(None, BTreeMap::new()).unwrap_err().to_string();
            assert!(err.contains("docker.namespace"), "{err}");
            assert_eq!(env_names()["PUG_DOCKER_IMAGE"], "docker.image");
            Ok(())
        });
    }

    #[test]
    fn host_mode_urls() {
        let mut c = Config::default();
        c.gateway.mode = GatewayMode::Host;
        c.gateway.domain = "g.example.com".into();
        c.gateway.public_url = "https://g.example.com".into();
        assert_eq!(c.tenant_url("acme"), "https://acme.g.example.com/");
    }
}
