//! The process backend as `[process]` of pug's configuration describes it.
//!
//! Owns: turning `pug_config::ProcessConfig` into the installer's [`DownloadPolicy`], the
//! isolation [`Mode`] and [`ProcessSettings`] (pure), and starting isolation and the backend
//! in that order ([`start`]), warning once when tenants are not isolated.
//!
//! Must not: read the store. Tenants' users come from the caller's [`TenantUsers`] (in
//! `pug serve`: uids the store allocates).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pug_config::{IsolationMode, ProcessConfig};

use crate::install::{DownloadPolicy, Installer};
use crate::isolation::{self, Isolation, IsolationSettings, Mode, Started, TenantUsers};
use crate::process::{ProcessBackend, ProcessSettings};
use crate::OrchestratorError;

/// How long a stopping instance gets after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the process backend did not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("process.grafana_bin {} is not a file; point it at a grafana executable or leave it empty to download releases", .0.display())]
    GrafanaBinNotAFile(PathBuf),
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
}

/// Whether tenants are isolated, for `pug serve`'s banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsolationState {
    /// A user of its own per tenant; instance ports reachable by pug only, through `chain`.
    Isolated { chain: String },
    /// Every instance runs as pug's user, because of `reason`.
    Shared { reason: String },
}

/// A started process backend.
pub struct ProcessSetup {
    pub backend: Arc<ProcessBackend>,
    pub isolation: IsolationState,
}

/// `process.isolation` as the isolation module's mode.
pub fn isolation_mode(mode: IsolationMode) -> Mode {
    match mode {
        IsolationMode::Auto => Mode::Auto,
        IsolationMode::Required => Mode::Required,
        IsolationMode::Off => Mode::Off,
    }
}

/// How releases are downloaded: `process.allow_insecure_download`, `max_download_mb` (MiB),
/// `checksum_base_url` (empty: the download base URL).
pub fn download_policy(config: &ProcessConfig) -> DownloadPolicy {
    DownloadPolicy {
        allow_insecure: config.allow_insecure_download,
        max_bytes: config.max_download_mb.saturating_mul(1 << 20),
        checksum_base_url: (!config.checksum_base_url.is_empty())
            .then(|| config.checksum_base_url.clone()),
    }
}

/// The backend's settings under `data_dir` (absolute): `tenants/` and `archive/`.
pub fn settings(
    config: &ProcessConfig,
    data_dir: &Path,
    isolation: Option<Arc<Isolation>>,
) -> ProcessSettings {
    ProcessSettings {
        root: data_dir.join("tenants"),
        archive: data_dir.join("archive"),
        bind_address: config.bind_address.clone(),
        stop_timeout: STOP_TIMEOUT,
        isolation,
    }
}

/// `process.grafana_bin`, when set: it must be a file.
fn grafana_bin(config: &ProcessConfig) -> Result<Option<PathBuf>, SetupError> {
    if config.grafana_bin.is_empty() {
        return Ok(None);
    }
    let bin = PathBuf::from(&config.grafana_bin);
    if !bin.is_file() {
        return Err(SetupError::GrafanaBinNotAFile(bin));
    }
    Ok(Some(bin))
}

/// Sets up isolation (as `process.isolation` says) and starts the backend under `data_dir`.
pub fn start(
    config: &ProcessConfig,
    data_dir: &Path,
    users: Arc<dyn TenantUsers>,
) -> Result<ProcessSetup, SetupError> {
    let installer = Installer::with_policy(
        grafana_bin(config)?,
        data_dir.join("grafana"),
        &config.download_base_url,
        download_policy(config),
    );
    let (isolation, state) = match Isolation::start(IsolationSettings {
        mode: isolation_mode(config.isolation),
        data_dir: data_dir.to_owned(),
        ports: (config.port_min, config.port_max),
        users,
        firewall: Arc::new(isolation::Iptables),
        uids: (config.tenant_uid_base, config.tenant_uid_count),
        uid_claims: crate::uid_claim::DEFAULT_DIR.into(),
    })? {
        Started::Isolated(iso) => {
            let chain = iso.chain().to_owned();
            (Some(iso), IsolationState::Isolated { chain })
        }
        Started::Shared { reason } => {
            tracing::warn!(
                "tenants are NOT isolated: {reason}. Every tenant's Grafana runs as pug's \
                 user and can reach every other tenant's Grafana as any user and read pug's \
                 files (master.key, local.token, pug.db): serve mutually trusting tenants \
                 only, or run pug as root with iptables installed (process.isolation)"
            );
            (None, IsolationState::Shared { reason })
        }
    };
    let backend = ProcessBackend::new(settings(config, data_dir, isolation), installer)?;
    Ok(ProcessSetup {
        backend,
        isolation: state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_modes_map_one_to_one() {
        let cases = [
            (IsolationMode::Auto, Mode::Auto),
            (IsolationMode::Required, Mode::Required),
            (IsolationMode::Off, Mode::Off),
        ];
        for (config, want) in cases {
            assert_eq!(isolation_mode(config), want, "{config:?}");
        }
    }

    #[test]
    fn the_download_policy_follows_the_configuration() {
        let cases: &[(&str, bool, u64, &str, DownloadPolicy)] = &[
            (
                "defaults: https only, checksums from the download host",
                false,
                1,
                "",
                DownloadPolicy {
                    allow_insecure: false,
                    max_bytes: 1 << 20,
                    checksum_base_url: None,
                },
            ),
            (
                "a checksum source of its own, http allowed",
                true,
                512,
                "https://sums.example",
                DownloadPolicy {
                    allow_insecure: true,
                    max_bytes: 512 << 20,
                    checksum_base_url: Some("https://sums.example".into()),
                },
            ),
            (
                "a huge limit saturates instead of wrapping",
                false,
                u64::MAX,
                "",
                DownloadPolicy {
                    allow_insecure: false,
                    max_bytes: u64::MAX,
                    checksum_base_url: None,
                },
            ),
        ];
        for (what, insecure, mb, sums, want) in cases {
            let config = ProcessConfig {
                allow_insecure_download: *insecure,
                max_download_mb: *mb,
                checksum_base_url: (*sums).into(),
                ..ProcessConfig::default()
            };
            let got = download_policy(&config);
            assert_eq!(
                (got.allow_insecure, got.max_bytes, got.checksum_base_url),
                (
                    want.allow_insecure,
                    want.max_bytes,
                    want.checksum_base_url.clone()
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn settings_live_under_the_data_dir() {
        let config = ProcessConfig {
            bind_address: "127.0.0.3".into(),
            ..ProcessConfig::default()
        };
        let s = settings(&config, Path::new("/srv/pug"), None);
        assert_eq!(s.root, Path::new("/srv/pug/tenants"));
        assert_eq!(s.archive, Path::new("/srv/pug/archive"));
        assert_eq!(s.bind_address, "127.0.0.3");
        assert_eq!(s.stop_timeout, STOP_TIMEOUT);
        assert!(s.isolation.is_none());
    }

    #[test]
    fn grafana_bin_must_be_a_file_when_set() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grafana");
        std::fs::write(&file, "").unwrap();
        let with = |bin: &Path| ProcessConfig {
            grafana_bin: bin.display().to_string(),
            ..ProcessConfig::default()
        };
        assert_eq!(grafana_bin(&ProcessConfig::default()).unwrap(), None);
        assert_eq!(grafana_bin(&with(&file)).unwrap(), Some(file.clone()));
        for bad in [dir.path().to_owned(), dir.path().join("missing")] {
            let e = grafana_bin(&with(&bad)).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!(
                    "process.grafana_bin {} is not a file; ",
                    bad.display()
                )),
                "{e}"
            );
        }
    }
}
