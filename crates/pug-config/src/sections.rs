//! The sections of pug's configuration (`[gateway]`, `[process]`, `[controller]`, `[grafana]`,
//! `[grafana_database]`, `[docker]`, `[renderer]`) and the enums they use: their fields, what
//! each means, and their defaults.
//!
//! Owns: the shape and defaults of every section (the environment variable names follow from
//! them, see [`crate::env_names`]).
//!
//! Must not: load or check a configuration (`Config::load` and `Config::validate` do, in the
//! crate root), or read anything.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
    /// The URL tenants' Grafanas call the renderer at (`rendering.server_url`), when it is not
    /// `listen`'s: with several pug replicas on swarm, a name that reaches every replica, the
    /// same on each (`http://tasks.<stack>_pug:8081/render`), so that no replica gives tenants
    /// an address of its own. Empty (the default): derived from `listen`.
    pub tenant_url: String,
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
    /// The swarm backend's renderer service (`[renderer.swarm]`).
    pub swarm: RendererSwarmConfig,
}

/// On the swarm backend, the renderer can be a service of its own that pug creates, upgrades
/// and heals (`<namespace>--renderer`, on the tenants' overlay, spread over nodes) instead of
/// the renderer embedded in pug.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RendererSwarmConfig {
    /// Tasks of the renderer service. 0 (the default): no service, tenants use the renderer
    /// embedded in pug (on pug's overlay address); 1 or more: a pug-managed service with this
    /// many tasks, and pug runs no Chromium of its own.
    pub replicas: u32,
    /// The service's image (needed when `replicas` ≥ 1): one whose entrypoint is `pug` and
    /// that has Chromium, e.g. built from `deploy/renderer/Dockerfile`.
    pub image: String,
    /// The URL the service reaches pug's API at, for its token table. Empty (the default):
    /// pug's own address on the overlay and `listen`'s port (so `listen` must not be
    /// loopback); with several pugs, one name for all (`http://tasks.<stack>_pug:8080`).
    pub pug_url: String,
}

/// The most tasks `renderer.swarm.replicas` may ask for.
pub const MAX_RENDERER_REPLICAS: u32 = 64;

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
            tenant_url: String::new(),
            chrome_path: String::new(),
            max_concurrency: 5,
            max_queue: 50,
            renders_per_browser: 1000,
            max_browser_rss_mb: 2048,
            page_reuse: 50,
            no_sandbox: false,
            swarm: RendererSwarmConfig::default(),
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
    /// The docker backend: addresses (or CIDR networks) Grafana accepts auth-proxy headers
    /// from. Empty: the bridge network's gateway address, where pug on the host connects from.
    /// Not used by swarm, whose tenants trust the gateway's signed identity token instead
    /// (`[auth.jwt]`), whichever pug replica sends it.
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
