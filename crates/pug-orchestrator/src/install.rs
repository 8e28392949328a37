//! Which `grafana` executable runs a version, and downloading it when missing.
//!
//! Owns: the lookup order (`process.grafana_bin` for every version, else
//! `<data>/grafana/<version>/bin/grafana`, else a download of Grafana's official linux-amd64
//! release tarball from `process.download_base_url`, checked against its published `.sha256`
//! and unpacked atomically), and a lock per version so concurrent tenants download it once.
//!
//! Download safety ([`DownloadPolicy`]): https only (also after redirects) unless the operator
//! allows http; the tarball is bounded in size (and so is what it unpacks to). The checksum
//! comes from `process.checksum_base_url` when set, else from the tarball's own origin: over
//! https that is what Grafana publishes (dl.grafana.com has the `.sha256` next to the tarball
//! and no signature), it authenticates the origin and catches corruption; an operator who does
//! not want one host to vouch for itself points `checksum_base_url` at checksums it verified.
//!
//! Must not: run Grafana. The process backend does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use pug_types::GrafanaVersion;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{error_chain, OrchestratorError};

/// A runnable Grafana: its executable and its home path (`--homepath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    pub bin: PathBuf,
    pub home: PathBuf,
}

/// What a download may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPolicy {
    /// Accept `http://` URLs and redirects (`process.allow_insecure_download`).
    pub allow_insecure: bool,
    /// The largest tarball, in bytes; it may unpack to 8 times this.
    pub max_bytes: u64,
    /// Where `.sha256` files come from; `None`: the download base URL.
    pub checksum_base_url: Option<String>,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        Self {
            allow_insecure: false,
            max_bytes: 1 << 30,
            checksum_base_url: None,
        }
    }
}

/// Refuses a URL that is not https, unless insecure downloads are allowed.
fn check_scheme(url: &str, allow_insecure: bool) -> Result<(), String> {
    if url.starts_with("https://") || (allow_insecure && url.starts_with("http://")) {
        Ok(())
    } else {
        Err(format!(
            "{url} is not an https:// URL; Grafana releases are downloaded over https only \
             (set process.allow_insecure_download = true to allow http)"
        ))
    }
}

/// Finds and installs Grafana releases.
#[derive(Debug)]
pub struct Installer {
    grafana_bin: Option<PathBuf>,
    dir: PathBuf,
    base_url: String,
    policy: DownloadPolicy,
    client: reqwest::Client,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Installer {
    /// `grafana_bin`: one executable for every version; `dir`: where releases are unpacked.
    /// Downloads follow [`DownloadPolicy::default`] (https only, at most 1 GiB).
    pub fn new(grafana_bin: Option<PathBuf>, dir: PathBuf, base_url: &str) -> Self {
        Self::with_policy(grafana_bin, dir, base_url, DownloadPolicy::default())
    }

    /// [`Installer::new`] with an explicit download policy.
    pub fn with_policy(
        grafana_bin: Option<PathBuf>,
        dir: PathBuf,
        base_url: &str,
        policy: DownloadPolicy,
    ) -> Self {
        let allow_insecure = policy.allow_insecure;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("more than 10 redirects")
            } else if let Err(e) = check_scheme(attempt.url().as_str(), allow_insecure) {
                attempt.error(format!("redirected to {e}"))
            } else {
                attempt.follow()
            }
        });
        // pug's one TLS setup (ring, webpki roots): never the host's certificate store.
        let client = pug_http::builder()
            .redirect(redirects)
            .build()
            .unwrap_or_default();
        Self {
            grafana_bin,
            dir,
            base_url: base_url.trim_end_matches('/').to_owned(),
            policy,
            client,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The `.sha256` URL of a version.
    pub fn checksum_url(&self, version: &GrafanaVersion) -> String {
        match &self.policy.checksum_base_url {
            Some(base) => format!(
                "{}/grafana-{version}.linux-amd64.tar.gz.sha256",
                base.trim_end_matches('/')
            ),
            None => format!("{}.sha256", self.tarball_url(version)),
        }
    }

    /// The tarball URL of a version.
    pub fn tarball_url(&self, version: &GrafanaVersion) -> String {
        format!("{}/grafana-{version}.linux-amd64.tar.gz", self.base_url)
    }

    /// The installation of `version` if it is already on this machine.
    pub fn installed(&self, version: &GrafanaVersion) -> Option<Installation> {
        if let Some(bin) = &self.grafana_bin {
            return Some(Installation {
                bin: bin.clone(),
                home: home_of(bin),
            });
        }
        let home = self.dir.join(version.to_string());
        let bin = home.join("bin").join("grafana");
        bin.is_file().then_some(Installation { bin, home })
    }

    /// Checks that `version` is installed or published (its checksum file exists), without
    /// downloading it.
    pub async fn check(&self, version: &GrafanaVersion) -> Result<(), OrchestratorError> {
        if self.installed(version).is_some() {
            return Ok(());
        }
        let url = self.checksum_url(version);
        let unknown = |reason: String| OrchestratorError::UnknownVersion {
            version: version.to_string(),
            reason,
        };
        check_scheme(&url, self.policy.allow_insecure).map_err(unknown)?;
        match self
            .client
            .get(&url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Err(unknown(format!(
                "no such release at {url}; check the version on https://grafana.com/grafana/download"
            ))),
            Ok(r) => Err(unknown(format!("{url} answered {}", r.status()))),
            Err(e) => Err(unknown(format!(
                "cannot reach {url} ({}); install it under {} or set process.grafana_bin",
                error_chain(&e),
                self.dir.join(version.to_string()).display()
            ))),
        }
    }

    /// The installation of `version`, downloading and unpacking it first if needed.
    pub async fn ensure(
        &self,
        version: &GrafanaVersion,
    ) -> Result<Installation, OrchestratorError> {
        if let Some(found) = self.installed(version) {
            return Ok(found);
        }
        let lock = {
            let mut locks = self.locks.lock().expect("install lock poisoned");
            locks.entry(version.to_string()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(found) = self.installed(version) {
            return Ok(found);
        }
        self.download(version).await?;
        self.installed(version)
            .ok_or_else(|| OrchestratorError::Install {
                version: version.to_string(),
                reason: "the unpacked release has no bin/grafana".into(),
            })
    }

    async fn download(&self, version: &GrafanaVersion) -> Result<(), OrchestratorError> {
        let fail = |reason: String| OrchestratorError::Install {
            version: version.to_string(),
            reason,
        };
        let url = self.tarball_url(version);
        check_scheme(&url, self.policy.allow_insecure).map_err(fail)?;
        let expected = self
            .expected_sha256(&self.checksum_url(version))
            .await
            .map_err(fail)?;
        let max = self.policy.max_bytes;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", self.dir.display())))?;
        let staging = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&self.dir)
            .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
        let tarball = staging.path().join("release.tar.gz");

        tracing::info!(%version, %url, "downloading Grafana");
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| fail(format!("download from {url} failed: {}", error_chain(&e))))?;
        let too_big = |size: u64| {
            format!(
                "{url} is {size} bytes or more, larger than the {max} bytes allowed; raise \
                 process.max_download_mb if this release really is that large"
            )
        };
        if let Some(len) = response.content_length().filter(|len| *len > max) {
            return Err(fail(too_big(len)));
        }
        let mut received: u64 = 0;
        let bar = indicatif::ProgressBar::new(response.content_length().unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("Grafana {version}"));
        let mut file = tokio::fs::File::create(&tarball)
            .await
            .map_err(|e| fail(format!("cannot write {}: {e}", tarball.display())))?;
        let mut hasher = Sha256::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| fail(format!("download from {url} broke off: {e}")))?;
            received += chunk.len() as u64;
            if received > max {
                return Err(fail(too_big(received)));
            }
            hasher.update(&chunk);
            bar.inc(chunk.len() as u64);
            file.write_all(&chunk)
                .await
                .map_err(|e| fail(format!("cannot write {}: {e}", tarball.display())))?;
        }
        file.flush().await.map_err(|e| fail(e.to_string()))?;
        bar.finish_and_clear();
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err(fail(format!(
                "checksum mismatch for {url}: expected sha256 {expected}, got {actual}; the download is corrupt or tampered with, and was discarded"
            )));
        }

        let unpack_dir = staging.path().join("unpacked");
        let tarball_for_unpack = tarball.clone();
        let unpack_to = unpack_dir.clone();
        let max_unpacked = max.saturating_mul(8);
        tokio::task::spawn_blocking(move || unpack(&tarball_for_unpack, &unpack_to, max_unpacked))
            .await
            .map_err(|e| fail(format!("unpacking panicked: {e}")))?
            .map_err(|e| fail(format!("cannot unpack {url}: {e}")))?;
        // Grafana's tarballs hold one top directory (`grafana-v11.3.0/`).
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&unpack_dir)
            .map_err(|e| fail(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let root = match entries.len() {
            1 if entries[0].is_dir() => entries.remove(0),
            _ => unpack_dir.clone(),
        };
        if !root.join("bin").join("grafana").is_file() {
            return Err(fail(format!(
                "{url} holds no bin/grafana; is it a Grafana release?"
            )));
        }
        let target = self.dir.join(version.to_string());
        std::fs::rename(&root, &target).map_err(|e| {
            fail(format!(
                "cannot move the release to {}: {e}",
                target.display()
            ))
        })?;
        tracing::info!(%version, path = %target.display(), "Grafana installed");
        Ok(())
    }

    async fn expected_sha256(&self, sum_url: &str) -> Result<String, String> {
        check_scheme(sum_url, self.policy.allow_insecure)?;
        let response = self
            .client
            .get(sum_url)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("cannot fetch the checksum {sum_url}: {}", error_chain(&e)))?;
        // A checksum file is one line; more than 4 KiB is not one.
        const MAX_SUM: usize = 4096;
        let mut text = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("cannot read the checksum {sum_url}: {e}"))?;
            text.extend_from_slice(&chunk);
            if text.len() > MAX_SUM {
                return Err(format!(
                    "{sum_url} is larger than {MAX_SUM} bytes; not a checksum file"
                ));
            }
        }
        let text = String::from_utf8_lossy(&text);
        let sum = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{sum_url} does not hold a sha256 checksum"));
        }
        Ok(sum)
    }
}

/// Unpacks a .tar.gz of at most `max_bytes` of file contents; the tar crate refuses entries
/// that would land outside `to`.
fn unpack(tarball: &Path, to: &Path, max_bytes: u64) -> std::io::Result<()> {
    let mut total: u64 = 0;
    std::fs::create_dir_all(to)?;
    let file = std::fs::File::open(tarball)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        total = total.saturating_add(entry.header().size()?);
        if total > max_bytes {
            return Err(std::io::Error::other(format!(
                "the release unpacks to more than {max_bytes} bytes"
            )));
        }
        if !entry.unpack_in(to)? {
            return Err(std::io::Error::other(format!(
                "entry {} points outside the release",
                entry.path()?.display()
            )));
        }
    }
    Ok(())
}

/// The home path of an executable: `/opt/grafana` for `/opt/grafana/bin/grafana`.
fn home_of(bin: &Path) -> PathBuf {
    let dir = bin.parent().unwrap_or(Path::new("/"));
    if dir.file_name().is_some_and(|n| n == "bin") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    }
}
