//! The process backend: every replica is a `grafana server` child process on this machine.
//!
//! Owns: each replica's directory (`<root>/<tenant>/replica-<n>/` with its `grafana.ini`, data,
//! logs, plugins and provisioning dirs), starting and stopping `grafana server`, and knowing
//! which processes are pug's.
//!
//! How pug recognises its processes: each one is started with `--pidfile
//! <root>/<tenant>/replica-<n>/run/<port>-<spec hash>.pid`, a flag Grafana itself has. The
//! command line therefore carries the tenant, the replica, the port and the spec hash, the way
//! a container carries labels. On start pug scans `/proc` for such command lines and adopts
//! what it finds, so restarting pug (even after SIGKILL) neither restarts healthy instances nor
//! leaves orphans: an adopted process whose tenant no longer exists is an orphan the controller
//! removes, and a process is never started for a replica that already has one.
//!
//! When pug isolates tenants ([`crate::isolation`]), each instance runs as its tenant's own uid
//! and gid with no supplementary groups. Its replica dir is `root:<gid>` 0750 and holds
//! `grafana.ini`, `provisioning/` and `dashboards/` (root's, group-readable: the tenant reads them,
//! pug alone writes them, so no file pug writes as root lies in a directory the tenant controls)
//! and `data/`, `logs/`, `plugins/`, `run/` (the tenant's, 0700). `console.log` (Grafana's
//! stdout and stderr) is pug's, in the replica dir. An adopted instance that runs as another
//! user than its tenant's (say, started before isolation was on) is replaced.
//!
//! Instances run in their own process group with a cleared environment (only `PATH`, `HOME`,
//! `TZ`, `LANG`), so neither Ctrl-C on pug's terminal nor a `GF_*` variable in pug's own
//! environment reaches tenants. They keep running when pug exits unless
//! [`ProcessBackend::stop_all`] is called.
//!
//! Must not: decide when to start or stop anything; restart crashed processes by itself (the
//! controller does, with backoff); read the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pug_types::{GrafanaVersion, TenantId};
use tokio::sync::mpsc;

mod files;
mod scan;

use crate::install::Installer;
use crate::isolation::{self, Isolation, TenantUser};
use crate::settings::render_ini;
use crate::{Instance, InstanceSpec, InstanceState, Orchestrator, OrchestratorError};
use files::{give_to, share_tree_with_group, share_with_group, tenant_uids_in, write_private};
use scan::{is_alive, last_log_line, scan_proc};

/// Settings of the process backend.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// `<data>/tenants`: one directory per tenant.
    pub root: PathBuf,
    /// `<data>/archive`: where deleted tenants' directories go.
    pub archive: PathBuf,
    /// The address instances listen on.
    pub bind_address: String,
    /// How long a stopping instance gets after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Tenants' isolation, when pug set it up ([`Isolation::start`]); `None`: every instance runs
    /// as pug's user (mutually trusting tenants only).
    pub isolation: Option<Arc<Isolation>>,
}

type Key = (TenantId, u32);

#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    port: u16,
    spec_hash: String,
    started_at_ms: i64,
    /// Started by this pug process (we can wait for it) rather than adopted.
    owned: bool,
    /// The user it runs as (`None`: unknown).
    uid: Option<u32>,
    exited: Option<String>,
}

/// The process backend.
#[derive(Debug)]
pub struct ProcessBackend {
    settings: ProcessSettings,
    installer: Installer,
    procs: Arc<Mutex<HashMap<Key, Proc>>>,
    changes_tx: mpsc::UnboundedSender<TenantId>,
    changes_rx: Mutex<Option<mpsc::UnboundedReceiver<TenantId>>>,
}

impl ProcessBackend {
    /// Creates the backend and adopts the instances a previous pug process left running.
    pub fn new(
        settings: ProcessSettings,
        installer: Installer,
    ) -> Result<Arc<Self>, OrchestratorError> {
        std::fs::create_dir_all(&settings.root).map_err(|source| OrchestratorError::Io {
            context: format!("cannot create {}", settings.root.display()),
            source,
        })?;
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let adopted = scan_proc(&settings.root);
        for ((tenant, replica), p) in &adopted {
            tracing::info!(%tenant, replica, pid = p.pid, port = p.port, "adopted a running instance");
        }
        let backend = Arc::new(Self {
            settings,
            installer,
            procs: Arc::new(Mutex::new(adopted)),
            changes_tx,
            changes_rx: Mutex::new(Some(changes_rx)),
        });
        backend.spawn_adopted_watcher();
        Ok(backend)
    }

    /// The directory of one replica.
    pub fn replica_dir(&self, tenant: &TenantId, replica: u32) -> PathBuf {
        self.settings
            .root
            .join(tenant.as_str())
            .join(format!("replica-{replica}"))
    }

    /// Stops every instance (used when pug is configured to take its instances down with it).
    pub async fn stop_all(&self) {
        let keys: Vec<Key> = self.procs.lock().expect("procs").keys().cloned().collect();
        let stops = keys
            .into_iter()
            .map(|(tenant, replica)| async move { self.remove(&tenant, replica).await });
        futures::future::join_all(stops).await;
    }

    /// Ends isolation when pug stops: removes the firewall chain, unless instances still run
    /// (they stay reachable by pug only; the next pug start replaces the chain).
    pub fn shutdown(&self) {
        let Some(iso) = &self.settings.isolation else {
            return;
        };
        let running = self
            .procs
            .lock()
            .expect("procs")
            .values()
            .filter(|p| p.exited.is_none() && is_alive(p.pid))
            .count();
        if running == 0 {
            iso.stop();
        } else {
            tracing::info!(
                chain = iso.chain(),
                running,
                "the firewall chain stays while instances run; the next pug start replaces it"
            );
        }
    }

    /// Adopted processes are not our children, so nothing tells us when they exit: look.
    fn spawn_adopted_watcher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                let mut gone = Vec::new();
                {
                    let mut procs = me.procs.lock().expect("procs");
                    for (key, p) in procs.iter_mut() {
                        if !p.owned && p.exited.is_none() && !is_alive(p.pid) {
                            p.exited = Some(format!(
                                "process {} (adopted at pug start) is gone; its exit status is unknown",
                                p.pid
                            ));
                            gone.push(key.0.clone());
                        }
                    }
                }
                for tenant in gone {
                    let _ = me.changes_tx.send(tenant);
                }
            }
        });
    }

    fn prepare_dirs(
        &self,
        spec: &InstanceSpec,
        dir: &Path,
        user: Option<TenantUser>,
    ) -> Result<PathBuf, OrchestratorError> {
        let io = |context: String| move |source| OrchestratorError::Io { context, source };
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        if let Some(user) = user {
            let tenant_dir = dir.parent().unwrap_or(dir);
            for (path, mode) in [(tenant_dir, 0o710), (dir, 0o750)] {
                share_with_group(path, user.gid, mode)
                    .map_err(io(format!("cannot set the owner of {}", path.display())))?;
            }
        }
        for sub in [
            "data",
            "logs",
            "plugins",
            "run",
            "tmp",
            "provisioning/datasources",
            "provisioning/dashboards",
            "provisioning/plugins",
            "provisioning/alerting",
        ] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(io(format!("cannot create {}", path.display())))?;
        }
        if let Some(user) = user {
            for sub in ["data", "logs", "plugins", "run", "tmp"] {
                let path = dir.join(sub);
                give_to(&path, user).map_err(io(format!(
                    "cannot give {} to the tenant's user",
                    path.display()
                )))?;
            }
        }
        // Pid files of earlier runs name other spec hashes; they must not linger.
        if let Ok(entries) = std::fs::read_dir(dir.join("run")) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let extra = backend_settings(dir, &self.settings.bind_address);
        for file in spec.provisioning.files(&dir.join("dashboards")) {
            let path = dir.join(&file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("cannot create {}", parent.display())))?;
            }
            // Every file is written private here (`file.private` marks the ones that must be):
            // dashboards are the tenant's own business too.
            write_private(&path, file.contents.as_bytes(), user.map(|u| u.gid))
                .map_err(io(format!("cannot write {}", path.display())))?;
        }
        let wanted: std::collections::HashSet<String> = spec
            .provisioning
            .dashboards
            .iter()
            .map(|d| format!("{}.json", d.name))
            .collect();
        if let Ok(entries) = std::fs::read_dir(dir.join("dashboards")) {
            for entry in entries.flatten() {
                if !wanted.contains(&entry.file_name().to_string_lossy().into_owned()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let ini = render_ini(&spec.settings(), &extra);
        let ini_path = dir.join("grafana.ini");
        write_private(&ini_path, ini.as_bytes(), user.map(|u| u.gid))
            .map_err(io(format!("cannot write {}", ini_path.display())))?;
        if let Some(user) = user {
            for sub in ["provisioning", "dashboards"] {
                let path = dir.join(sub);
                if path.is_dir() {
                    share_tree_with_group(&path, user.gid)
                        .map_err(io(format!("cannot set the owner of {}", path.display())))?;
                }
            }
        }
        Ok(ini_path)
    }

    async fn stop_pid(&self, pid: u32) {
        let target = Pid::from_raw(pid as i32);
        if kill(target, Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.settings.stop_timeout;
        while is_alive(pid) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(pid, "instance ignored SIGTERM; sending SIGKILL");
                let _ = kill(target, Signal::SIGKILL);
                let hard_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while is_alive(pid) && tokio::time::Instant::now() < hard_deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn instance(&self, key: &Key, p: &Proc) -> Instance {
        Instance {
            tenant: key.0.clone(),
            replica: key.1,
            spec_hash: p.spec_hash.clone(),
            endpoint: format!("{}:{}", self.settings.bind_address, p.port),
            state: match &p.exited {
                None => InstanceState::Running,
                Some(reason) => InstanceState::Exited {
                    reason: reason.clone(),
                },
            },
            started_at_ms: p.started_at_ms,
        }
    }
}

#[async_trait]
impl Orchestrator for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn check_version(&self, version: &GrafanaVersion) -> Result<(), OrchestratorError> {
        self.installer.check(version).await
    }

    async fn ensure(&self, spec: &InstanceSpec) -> Result<Instance, OrchestratorError> {
        let key: Key = (spec.tenant.clone(), spec.replica);
        let hash = spec.hash();
        let user = match &self.settings.isolation {
            Some(iso) => Some(iso.users.user_of(&spec.tenant).await.map_err(|e| {
                OrchestratorError::Isolation(format!(
                    "no user for tenant {}'s instances: {e}",
                    spec.tenant
                ))
            })?),
            None => None,
        };
        let current = self.procs.lock().expect("procs").get(&key).cloned();
        if let Some(p) = &current {
            let right_user = match user {
                Some(u) => p.uid == Some(u.uid),
                None => true,
            };
            if p.exited.is_none() && p.spec_hash == hash && p.port == spec.port && right_user {
                return Ok(self.instance(&key, p));
            }
            if p.exited.is_none() && !right_user {
                tracing::info!(tenant = %spec.tenant, replica = spec.replica, pid = p.pid, uid = ?p.uid, "replacing an instance that does not run as its tenant's own user");
            }
            if p.exited.is_none() {
                tracing::info!(tenant = %spec.tenant, replica = spec.replica, pid = p.pid, "replacing an instance that runs an outdated spec");
                self.stop_pid(p.pid).await;
            }
        }
        let install = self.installer.ensure(&spec.version).await?;
        let dir = self.replica_dir(&spec.tenant, spec.replica);
        if user.is_some() {
            isolation::others_can_execute(&install.bin).map_err(OrchestratorError::Isolation)?;
        }
        let ini = self.prepare_dirs(spec, &dir, user)?;
        let pidfile = dir.join("run").join(format!("{}-{hash}.pid", spec.port));
        // In the replica dir, which only pug writes: a file pug opens as root never lies in a
        // directory the tenant controls (it could be a symlink to anything).
        let log_path = dir.join("console.log");
        let start_err = |source| OrchestratorError::Start {
            tenant: spec.tenant.to_string(),
            replica: spec.replica,
            source,
        };
        use std::os::unix::fs::OpenOptionsExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(start_err)?;
        let log2 = log.try_clone().map_err(start_err)?;
        let mut cmd = tokio::process::Command::new(&install.bin);
        cmd.arg("server")
            .arg("--homepath")
            .arg(&install.home)
            .arg("--config")
            .arg(&ini)
            .arg("--pidfile")
            .arg(&pidfile)
            .current_dir(&install.home)
            .env_clear()
            .env(
                "HOME",
                if user.is_some() {
                    dir.join("data")
                } else {
                    dir.clone()
                },
            )
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            // Temporary files stay in the replica's own directory (archived with the tenant),
            // not in the machine's shared /tmp, where the next owner of the uid would find them.
            .env("TMPDIR", dir.join("tmp"))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        if let Some(u) = user {
            // As root, std clears the supplementary groups (setgroups(0)) before setuid when
            // uid is set and no groups are given; the instance keeps no group of pug's.
            cmd.uid(u.uid).gid(u.gid);
        }
        for var in ["TZ", "LANG"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        let mut child = cmd.spawn().map_err(start_err)?;
        let pid = child.id().unwrap_or(0);
        let proc = Proc {
            pid,
            port: spec.port,
            spec_hash: hash,
            started_at_ms: now_ms(),
            owned: true,
            uid: Some(user.map_or_else(|| nix::unistd::Uid::effective().as_raw(), |u| u.uid)),
            exited: None,
        };
        self.procs
            .lock()
            .expect("procs")
            .insert(key.clone(), proc.clone());
        tracing::info!(tenant = %spec.tenant, replica = spec.replica, pid, port = spec.port, version = %spec.version, "instance started");

        let procs = self.procs.clone();
        let changes = self.changes_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let reason = match status {
                Ok(s) => match s.code() {
                    Some(code) => format!("exited with code {code}"),
                    None => format!("was killed ({s})"),
                },
                Err(e) => format!("could not be waited for: {e}"),
            };
            let last = last_log_line(&log_path);
            let reason = match last {
                Some(line) => format!("{reason}; last log line: {line}"),
                None => reason,
            };
            let mut procs = procs.lock().expect("procs");
            if let Some(p) = procs.get_mut(&key) {
                if p.pid == pid {
                    p.exited = Some(reason);
                    let _ = changes.send(key.0.clone());
                }
            }
        });
        Ok(self.instance(&(spec.tenant.clone(), spec.replica), &proc))
    }

    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, OrchestratorError> {
        let procs = self.procs.lock().expect("procs");
        let mut out: Vec<Instance> = procs
            .iter()
            .filter(|(k, _)| &k.0 == tenant)
            .map(|(k, p)| self.instance(k, p))
            .collect();
        out.sort_by_key(|i| i.replica);
        Ok(out)
    }

    async fn all_instances(&self) -> Result<Vec<Instance>, OrchestratorError> {
        let procs = self.procs.lock().expect("procs");
        let mut out: Vec<Instance> = procs.iter().map(|(k, p)| self.instance(k, p)).collect();
        out.sort_by(|a, b| (&a.tenant, a.replica).cmp(&(&b.tenant, b.replica)));
        Ok(out)
    }

    async fn remove(&self, tenant: &TenantId, replica: u32) -> Result<(), OrchestratorError> {
        let key = (tenant.clone(), replica);
        let current = self.procs.lock().expect("procs").get(&key).cloned();
        if let Some(p) = current {
            if p.exited.is_none() {
                self.stop_pid(p.pid).await;
            }
            let mut procs = self.procs.lock().expect("procs");
            if procs.get(&key).is_some_and(|q| q.pid == p.pid) {
                procs.remove(&key);
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.replica_dir(tenant, replica).join("run")) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    async fn archive(&self, tenant: &TenantId) -> Result<(), OrchestratorError> {
        let dir = self.settings.root.join(tenant.as_str());
        if !dir.exists() {
            return Ok(());
        }
        let io = |context: String| move |source| OrchestratorError::Io { context, source };
        std::fs::create_dir_all(&self.settings.archive).map_err(io(format!(
            "cannot create {}",
            self.settings.archive.display()
        )))?;
        // Nothing of the tenant's user may outlive the tenant (its id goes to the next tenant).
        if self.settings.isolation.is_some() {
            let me = nix::unistd::Uid::effective().as_raw();
            for uid in tenant_uids_in(&dir)
                .into_iter()
                .filter(|u| *u != me && *u != 0)
            {
                for pid in isolation::processes_of(uid) {
                    tracing::info!(%tenant, pid, uid, "killing a leftover process of a deleted tenant's user");
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
                for shared in crate::leftovers::SHARED_DIRS {
                    let removed = crate::leftovers::remove_owned_by(
                        Path::new(shared),
                        uid,
                        &[&self.settings.root, &self.settings.archive],
                    );
                    if removed > 0 {
                        tracing::info!(%tenant, uid, dir = shared, removed, "removed a deleted tenant's files from a shared directory");
                    }
                }
            }
            // The archive is root's 0700: once there, the files are out of reach of whoever
            // gets this uid next.
            isolation::set_mode(&self.settings.archive, 0o700).map_err(io(format!(
                "cannot make {} private",
                self.settings.archive.display()
            )))?;
        }
        let target = self.settings.archive.join(format!("{tenant}-{}", now_ms()));
        std::fs::rename(&dir, &target).map_err(io(format!(
            "cannot move {} to {}",
            dir.display(),
            target.display()
        )))?;
        tracing::info!(%tenant, archive = %target.display(), "tenant data archived");
        Ok(())
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<TenantId>> {
        self.changes_rx.lock().expect("changes").take()
    }

    /// pug connects to its instances at `process.bind_address`, and a connection to a local
    /// address comes from that address: loopback's, or the network address instances listen
    /// on. (Only pug's user may connect, and other machines not at all: see `isolation`.)
    fn gateway_trust(&self) -> crate::GatewayTrust {
        let mut out = vec!["127.0.0.1".to_owned(), "::1".to_owned()];
        let bind = &self.settings.bind_address;
        if bind
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified())
        {
            out.push(bind.clone());
        }
        crate::GatewayTrust::Addresses(out)
    }
}

/// The settings this backend writes into a replica's `grafana.ini` besides the spec's: its
/// directories and its address (every one reserved, so no override can move them).
fn backend_settings(dir: &Path, bind_address: &str) -> [(&'static str, &'static str, String); 5] {
    let path_of = |sub: &str| dir.join(sub).display().to_string();
    [
        ("paths", "data", path_of("data")),
        ("paths", "logs", path_of("logs")),
        ("paths", "plugins", path_of("plugins")),
        ("paths", "provisioning", path_of("provisioning")),
        ("server", "http_addr", bind_address.to_owned()),
    ]
}

#[allow(clippy::disallowed_methods)] // The crate's one wall-clock read (clippy.toml).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
