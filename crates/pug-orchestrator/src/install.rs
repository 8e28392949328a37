//! Which `grafana` executable runs a version, and downloading it when missing.
//!
//! Owns: the lookup order (`process.grafana_bin` for every version, else
//! `<data>/grafana/<version>/bin/grafana`, else a download of Grafana's official linux-amd64
//! release tarball from `process.download_base_url`, checked against its published `.sha256`
//! and unpacked atomically), and a lock per version so concurrent tenants download it once.
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

/// Finds and installs Grafana releases.
#[derive(Debug)]
pub struct Installer {
    grafana_bin: Option<PathBuf>,
    dir: PathBuf,
    base_url: String,
    client: reqwest::Client,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Installer {
    /// `grafana_bin`: one executable for every version; `dir`: where releases are unpacked.
    pub fn new(grafana_bin: Option<PathBuf>, dir: PathBuf, base_url: &str) -> Self {
        Self {
            grafana_bin,
            dir,
            base_url: base_url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            locks: Mutex::new(HashMap::new()),
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
        let url = format!("{}.sha256", self.tarball_url(version));
        let unknown = |reason: String| OrchestratorError::UnknownVersion {
            version: version.to_string(),
            reason,
        };
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
        let expected = self.expected_sha256(&url).await.map_err(fail)?;
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
        tokio::task::spawn_blocking(move || unpack(&tarball_for_unpack, &unpack_to))
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

    async fn expected_sha256(&self, url: &str) -> Result<String, String> {
        let sum_url = format!("{url}.sha256");
        let text = self
            .client
            .get(&sum_url)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("cannot fetch the checksum {sum_url}: {}", error_chain(&e)))?
            .text()
            .await
            .map_err(|e| format!("cannot read the checksum {sum_url}: {e}"))?;
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

/// Unpacks a .tar.gz; the tar crate refuses entries that would land outside `to`.
fn unpack(tarball: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let file = std::fs::File::open(tarball)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
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
