//! Isolation of the process backend's tenants from each other and from pug itself.
//!
//! Grafana trusts auth-proxy headers from the gateway's address, 127.0.0.1, which every local
//! process shares. So when pug runs as root it isolates tenants with two mechanisms of the kernel:
//! - **a Unix user of its own per tenant**: each tenant's Grafana runs as a numeric uid/gid the
//!   store allocates ([`TenantUsers`]), with no supplementary groups. It can write only its
//!   instance's `data`, `logs`, `plugins` and `run` dirs, read its own `grafana.ini` and
//!   provisioning (root-owned, group-readable by its gid), and nothing of pug's (`master.key`,
//!   `local.token`, `pug.db` are root's, 0600) or of another tenant (`<data>/tenants/<id>` is
//!   `root:<gid>` 0710). pug's data dir is 0711: traversable, not listable.
//! - **only pug's user may connect to instance ports**: an `iptables`/`ip6tables` chain of this
//!   pug's own (`PUG-<hash of the data dir>`, jumped to first from `OUTPUT`) resets every new TCP
//!   connection over loopback to this pug's instance port range from any other user. A request
//!   that did not come through pug (the gateway, health probes, the renderer's Chromium, all pug's
//!   uid) therefore never reaches a Grafana, let alone authenticates in it.
//!
//! - **a uid range of its own per pug**: [`crate::uid_claim`] keeps two pugs on one host from
//!   giving out the same uids.
//!
//! Owns: deciding whether pug isolates ([`decide`], pure), the firewall rules ([`reject_rule`],
//! [`stale_chains`], pure) and running them through the [`Firewall`] seam ([`Iptables`] at the
//! edge), the modes of pug's data dir, and the checks that tenant users can reach what they run.
//!
//! Must not: read the store (pug wires [`TenantUsers`] to it); touch firewall chains of other pugs,
//! except stale ones whose data dir no longer exists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pug_types::TenantId;
use sha2::{Digest, Sha256};

use crate::OrchestratorError;

/// `process.isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Isolate when pug can; otherwise say so and serve mutually trusting tenants.
    Auto,
    /// Refuse to start without isolation.
    Required,
    /// Never isolate.
    Off,
}

/// The Unix user and group a tenant's instances run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantUser {
    pub uid: u32,
    pub gid: u32,
}

/// Gives each tenant its user (stable while the tenant exists, unique among tenants).
#[async_trait]
pub trait TenantUsers: Send + Sync + std::fmt::Debug {
    async fn user_of(&self, tenant: &TenantId) -> Result<TenantUser, String>;
}

/// Runs one firewall command (`iptables` or `ip6tables` with `args`); `Err` carries its stderr.
pub trait Firewall: Send + Sync + std::fmt::Debug {
    fn run(&self, program: &str, args: &[String]) -> Result<String, String>;
}

/// The real [`Firewall`]: the `iptables` commands of the Debian package `iptables`.
#[derive(Debug, Default)]
pub struct Iptables;

impl Firewall for Iptables {
    fn run(&self, program: &str, args: &[String]) -> Result<String, String> {
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .find(|l| !l.starts_with("# Warning"))
                .unwrap_or("")
                .trim();
            Err(format!("{program} {} failed: {line}", args.join(" ")))
        }
    }
}

/// What pug does about isolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Isolate,
    /// Serve without isolation; `reason` is what pug says at start.
    Shared {
        reason: String,
    },
    /// Refuse to start (`required`), with one line saying why and how to fix it.
    Refuse {
        reason: String,
    },
}

/// Whether pug isolates, given the mode and the first thing that prevents it (if any).
pub fn decide(mode: Mode, problem: Option<String>) -> Decision {
    match (mode, problem) {
        (Mode::Off, _) => Decision::Shared {
            reason: "process.isolation is off".into(),
        },
        (_, None) => Decision::Isolate,
        (Mode::Auto, Some(reason)) => Decision::Shared { reason },
        (Mode::Required, Some(reason)) => Decision::Refuse {
            reason: format!("process.isolation is required but {reason}"),
        },
    }
}

/// What keeps tenant users from their instance directories, if anything: pug must be root, and
/// every directory above the data dir must be searchable by other users (mode `o+x`).
/// `ancestors` are (dir, mode) from the data dir's parent up.
pub fn host_problem(euid: u32, ancestors: &[(PathBuf, u32)]) -> Option<String> {
    if euid != 0 {
        return Some(format!(
            "pug runs as uid {euid}, not root, so it cannot give tenants users of their own \
             (run pug as root to isolate tenants)"
        ));
    }
    ancestors
        .iter()
        .find(|(_, mode)| mode & 0o001 == 0)
        .map(|(dir, mode)| {
            format!(
            "{} (mode {:o}) is not searchable by other users, so tenants' Grafana could not reach \
             their directories (chmod o+x it, or put the data dir elsewhere)",
            dir.display(),
            mode & 0o7777
        )
        })
}

/// The modes of the directories above `dir`, nearest first.
pub fn ancestor_modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .skip(1)
        .filter_map(|a| {
            let mode = std::fs::metadata(a).ok()?.permissions().mode();
            Some((a.to_owned(), mode))
        })
        .collect()
}

/// The firewall chain of the pug whose data dir is `data_dir` (iptables allows 28 characters).
pub fn chain_name(data_dir: &Path) -> String {
    let hash = Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    format!("PUG-{}", hex::encode_upper(&hash[..4]))
}

/// The comment on a chain's rule, naming its data dir (so a later pug can tell a stale chain).
fn comment(data_dir: &Path) -> String {
    format!("pug {}", data_dir.display())
}

/// The one rule of a pug's chain: a new TCP connection over loopback to an instance port from
/// any user but pug's is reset (the client sees "connection refused"). Only SYNs match, so the
/// instances' own replies to pug are never touched, whatever ports they use.
pub fn reject_rule(chain: &str, ports: (u16, u16), pug_uid: u32, data_dir: &Path) -> Vec<String> {
    let uid = pug_uid.to_string();
    syn_reset_rule(
        chain,
        &["-o", "lo"],
        ports,
        &["-m", "owner", "!", "--uid-owner", &uid],
        data_dir,
    )
}

/// The chain pug's INPUT rule lives in (a chain jumped from OUTPUT cannot match on the input
/// interface).
pub fn input_chain(chain: &str) -> String {
    format!("{chain}-IN")
}

/// The rule of a pug's input chain: a new TCP connection to an instance port from another
/// machine (any interface but loopback) is reset. Instances listen on loopback by default;
/// with `process.bind_address` set to a network address they would otherwise be reachable
/// from the network without the gateway.
pub fn input_rule(chain: &str, ports: (u16, u16), data_dir: &Path) -> Vec<String> {
    syn_reset_rule(chain, &["!", "-i", "lo"], ports, &[], data_dir)
}

/// `-A chain <interface> -p tcp --syn --dport <ports> <matches> -m comment … -j REJECT
/// --reject-with tcp-reset`: only SYNs match, so established connections are never touched.
fn syn_reset_rule(
    chain: &str,
    interface: &[&str],
    ports: (u16, u16),
    matches: &[&str],
    data_dir: &Path,
) -> Vec<String> {
    let ports = format!("{}:{}", ports.0, ports.1);
    let comment = comment(data_dir);
    let mut rule = vec!["-w", "-A", chain];
    rule.extend_from_slice(interface);
    rule.extend_from_slice(&["-p", "tcp", "--syn", "--dport", &ports]);
    rule.extend_from_slice(matches);
    rule.extend_from_slice(&[
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]);
    rule.iter().map(|s| s.to_string()).collect()
}

/// Chains of `iptables -S` output that belong to pugs whose data dir no longer exists (a pug
/// killed with SIGKILL cannot remove its chain).
pub fn stale_chains(listing: &str, exists: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for line in listing.lines() {
        let Some(rest) = line.strip_prefix("-A PUG-") else {
            continue;
        };
        let chain = format!("PUG-{}", rest.split_whitespace().next().unwrap_or(""));
        let Some((_, after)) = line.split_once("--comment ") else {
            continue;
        };
        let value = match after.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or(""),
            None => after.split_whitespace().next().unwrap_or(""),
        };
        let Some(dir) = value.strip_prefix("pug ") else {
            continue;
        };
        if !dir.is_empty() && !exists(Path::new(dir)) && !out.contains(&chain) {
            out.push(chain);
        }
    }
    out
}

const PROGRAMS: [&str; 2] = ["iptables", "ip6tables"];

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Removes a chain and the jumps to it (absent is fine).
fn remove_chain(fw: &dyn Firewall, program: &str, chain: &str) {
    // A jump may be there more than once (two pugs raced on one data dir); a few passes at most.
    for hook in ["OUTPUT", "INPUT"] {
        for _ in 0..8 {
            if fw
                .run(program, &args(&["-w", "-D", hook, "-j", chain]))
                .is_err()
            {
                break;
            }
        }
    }
    let _ = fw.run(program, &args(&["-w", "-F", chain]));
    let _ = fw.run(program, &args(&["-w", "-X", chain]));
}

/// Installs (replacing a stale one of the same name) this pug's chain in both IP versions.
pub fn install_firewall(
    fw: &dyn Firewall,
    data_dir: &Path,
    ports: (u16, u16),
    pug_uid: u32,
) -> Result<String, String> {
    let chain = chain_name(data_dir);
    for program in PROGRAMS {
        if let Ok(listing) = fw.run(program, &args(&["-w", "-S"])) {
            for stale in stale_chains(&listing, |p| p.exists()) {
                if stale != chain {
                    tracing::info!(chain = %stale, program, "removing the firewall chain of a pug whose data dir is gone");
                    remove_chain(fw, program, &stale);
                }
            }
        }
        // Exists already (a pug on this data dir was killed): it is flushed and filled anew.
        let _ = fw.run(program, &args(&["-w", "-N", &chain]));
        fw.run(program, &args(&["-w", "-F", &chain]))?;
        fw.run(program, &reject_rule(&chain, ports, pug_uid, data_dir))?;
        if fw
            .run(program, &args(&["-w", "-C", "OUTPUT", "-j", &chain]))
            .is_err()
        {
            fw.run(program, &args(&["-w", "-I", "OUTPUT", "1", "-j", &chain]))?;
        }
        let input = input_chain(&chain);
        let _ = fw.run(program, &args(&["-w", "-N", &input]));
        fw.run(program, &args(&["-w", "-F", &input]))?;
        fw.run(program, &input_rule(&input, ports, data_dir))?;
        if fw
            .run(program, &args(&["-w", "-C", "INPUT", "-j", &input]))
            .is_err()
        {
            fw.run(program, &args(&["-w", "-I", "INPUT", "1", "-j", &input]))?;
        }
    }
    Ok(chain)
}

/// Tenants' isolation, once set up.
#[derive(Debug)]
pub struct Isolation {
    pub(crate) users: Arc<dyn TenantUsers>,
    firewall: Arc<dyn Firewall>,
    chain: String,
    /// Held while pug runs: no other pug on the host gives out these uids.
    _uids: crate::uid_claim::UidClaim,
}

/// The outcome of [`Isolation::start`].
#[derive(Debug)]
pub enum Started {
    Isolated(Arc<Isolation>),
    /// Not isolated; pug says `reason` at start.
    Shared {
        reason: String,
    },
}

/// What [`Isolation::start`] needs.
#[derive(Debug)]
pub struct IsolationSettings {
    pub mode: Mode,
    /// pug's data dir (absolute).
    pub data_dir: PathBuf,
    /// The instance port range (`process.port_min`, `process.port_max`).
    pub ports: (u16, u16),
    pub users: Arc<dyn TenantUsers>,
    pub firewall: Arc<dyn Firewall>,
    /// The tenant uid range `users` gives out (`process.tenant_uid_base`, `tenant_uid_count`).
    pub uids: (u32, u32),
    /// Where pugs on this host claim their uid ranges ([`crate::uid_claim::DEFAULT_DIR`]).
    pub uid_claims: PathBuf,
}

impl Isolation {
    /// Sets isolation up (data dir modes, the firewall chain), or says why pug serves without it;
    /// `Err` when it is required and impossible.
    pub fn start(s: IsolationSettings) -> Result<Started, OrchestratorError> {
        let euid = nix::unistd::Uid::effective().as_raw();
        let problem = match s.mode {
            Mode::Off => None,
            _ => host_problem(euid, &ancestor_modes(&s.data_dir)),
        };
        let refuse = |reason: String| Err(OrchestratorError::Isolation(reason));
        match decide(s.mode, problem) {
            Decision::Shared { reason } => return Ok(Started::Shared { reason }),
            Decision::Refuse { reason } => return refuse(reason),
            Decision::Isolate => {}
        }
        let uids = crate::uid_claim::claim(&s.uid_claims, s.uids, &s.data_dir)
            .map_err(OrchestratorError::Isolation)?;
        if let Err(e) = set_data_dir_modes(&s.data_dir) {
            return refuse(format!(
                "cannot set the modes of {}: {e}",
                s.data_dir.display()
            ));
        }
        match install_firewall(s.firewall.as_ref(), &s.data_dir, s.ports, euid) {
            Ok(chain) => {
                tracing::info!(%chain, ports = ?s.ports, "tenants isolated: own uids, instance ports reachable by pug only");
                Ok(Started::Isolated(Arc::new(Self {
                    users: s.users,
                    firewall: s.firewall,
                    chain,
                    _uids: uids,
                })))
            }
            Err(e) => {
                let reason =
                    format!("the firewall cannot be set up ({e}); install the iptables package");
                for program in PROGRAMS {
                    let chain = chain_name(&s.data_dir);
                    remove_chain(s.firewall.as_ref(), program, &chain);
                    remove_chain(s.firewall.as_ref(), program, &input_chain(&chain));
                }
                match decide(s.mode, Some(reason)) {
                    Decision::Refuse { reason } => refuse(reason),
                    Decision::Shared { reason } => Ok(Started::Shared { reason }),
                    Decision::Isolate => unreachable!("a problem never isolates"),
                }
            }
        }
    }

    /// Removes the firewall chain (only once no instance runs: while one does, its port stays
    /// closed to everyone but pug, and the next pug start replaces the chain).
    pub fn stop(&self) {
        for program in PROGRAMS {
            remove_chain(self.firewall.as_ref(), program, &self.chain);
            remove_chain(self.firewall.as_ref(), program, &input_chain(&self.chain));
        }
        tracing::info!(chain = %self.chain, "firewall chain removed");
    }

    /// The chain's name.
    pub fn chain(&self) -> &str {
        &self.chain
    }
}

/// pug's data dir 0711 (tenants traverse to their own dir, list nothing), `tenants` 0711,
/// `archive` 0700, `grafana` (installed releases) 0755.
fn set_data_dir_modes(data_dir: &Path) -> std::io::Result<()> {
    for (sub, mode) in [
        ("", 0o711),
        ("tenants", 0o711),
        ("archive", 0o700),
        ("grafana", 0o755),
    ] {
        let dir = if sub.is_empty() {
            data_dir.to_owned()
        } else {
            data_dir.join(sub)
        };
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, mode)?;
    }
    Ok(())
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Whether a tenant user (no group of the file) can execute `bin`: every directory above it
/// searchable by others and the file executable by others.
pub fn others_can_execute(bin: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bin)
        .map_err(|e| format!("{}: {e}", bin.display()))?
        .permissions()
        .mode();
    if mode & 0o001 == 0 {
        return Err(format!(
            "{} (mode {:o}) is not executable by other users, so tenants cannot run it (chmod o+rx it)",
            bin.display(),
            mode & 0o7777
        ));
    }
    match ancestor_modes(bin).into_iter().find(|(_, m)| m & 0o001 == 0) {
        Some((dir, m)) => Err(format!(
            "{} (mode {:o}) is not searchable by other users, so tenants cannot run {} (chmod o+x it)",
            dir.display(),
            m & 0o7777,
            bin.display()
        )),
        None => Ok(()),
    }
}

/// The real uid of a process, from `/proc/<pid>/status`.
pub fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_uid(&status)
}

fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every live process whose real uid is `uid`.
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| process_uid(*pid) == Some(uid))
        .collect()
}

#[cfg(test)]
mod tests;
