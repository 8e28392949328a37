//! Grafana release download against a local HTTP server serving tarballs built here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use pug_orchestrator::install::{DownloadPolicy, Installer};
use pug_orchestrator::OrchestratorError;
use pug_types::GrafanaVersion;
use sha2::{Digest, Sha256};

/// A release tarball laid out like Grafana's: `grafana-v<version>/bin/grafana`.
fn tarball(version: &str, script: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, body, mode) in [
        (
            format!("grafana-v{version}/bin/grafana"),
            script.as_bytes(),
            0o755,
        ),
        (
            format!("grafana-v{version}/VERSION"),
            version.as_bytes(),
            0o644,
        ),
        (
            format!("grafana-v{version}/conf/defaults.ini"),
            b"[server]\n".as_slice(),
            0o644,
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        builder.append_data(&mut header, path, body).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

struct Releases {
    files: HashMap<String, Vec<u8>>,
    downloads: AtomicUsize,
}

async fn serve_file(
    State(r): State<Arc<Releases>>,
    Path(name): Path<String>,
) -> Result<Vec<u8>, StatusCode> {
    if name.ends_with(".tar.gz") {
        r.downloads.fetch_add(1, Ordering::SeqCst);
    }
    r.files.get(&name).cloned().ok_or(StatusCode::NOT_FOUND)
}

async fn start(files: HashMap<String, Vec<u8>>) -> (String, Arc<Releases>) {
    let releases = Arc::new(Releases {
        files,
        downloads: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/oss/release/{name}", axum::routing::get(serve_file))
        .with_state(releases.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/oss/release"), releases)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn v(s: &str) -> GrafanaVersion {
    GrafanaVersion::parse(s).unwrap()
}

#[tokio::test]
async fn downloads_verifies_and_unpacks_releases() {
    let good = tarball("11.3.0", "#!/bin/sh\necho grafana 11.3.0\n");
    let corrupt_original = tarball("11.4.0", "#!/bin/sh\necho grafana 11.4.0\n");
    let mut corrupt = corrupt_original.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    let not_grafana = {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "README", &b"hi"[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    };
    let mut files = HashMap::new();
    files.insert(
        "grafana-11.3.0.linux-amd64.tar.gz.sha256".into(),
        format!("{}  grafana-11.3.0.linux-amd64.tar.gz\n", sha(&good)).into_bytes(),
    );
    files.insert("grafana-11.3.0.linux-amd64.tar.gz".into(), good);
    // The checksum is of the original; the server delivers a corrupted copy.
    files.insert(
        "grafana-11.4.0.linux-amd64.tar.gz.sha256".into(),
        sha(&corrupt_original).into_bytes(),
    );
    files.insert("grafana-11.4.0.linux-amd64.tar.gz".into(), corrupt);
    files.insert(
        "grafana-11.6.0.linux-amd64.tar.gz.sha256".into(),
        sha(&not_grafana).into_bytes(),
    );
    files.insert("grafana-11.6.0.linux-amd64.tar.gz".into(), not_grafana);
    let (base, releases) = start(files).await;
    let dir = tempfile::tempdir().unwrap();
    let installer = Installer::with_policy(None, dir.path().join("grafana"), &base, insecure());

    // Known versions pass the check without a download; unknown ones are refused.
    installer.check(&v("11.3.0")).await.unwrap();
    let err = installer.check(&v("11.9.9")).await.unwrap_err();
    assert!(
        matches!(err, OrchestratorError::UnknownVersion { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no such release"), "{err}");
    assert_eq!(releases.downloads.load(Ordering::SeqCst), 0);

    // Concurrent requests for one version download it once.
    let version = v("11.3.0");
    let (a, b) = tokio::join!(installer.ensure(&version), installer.ensure(&version));
    let install = a.unwrap();
    assert_eq!(install, b.unwrap());
    assert_eq!(install.home, dir.path().join("grafana/11.3.0"));
    assert!(install.bin.ends_with("bin/grafana"));
    let out = std::process::Command::new(&install.bin).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "grafana 11.3.0\n",
        "the executable bit survived"
    );
    installer.ensure(&v("11.3.0")).await.unwrap();
    assert_eq!(releases.downloads.load(Ordering::SeqCst), 1);

    // A corrupt tarball is refused and leaves nothing behind.
    let err = installer.ensure(&v("11.4.0")).await.unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(!dir.path().join("grafana/11.4.0").exists());
    // A tarball without bin/grafana is refused too.
    let err = installer.ensure(&v("11.6.0")).await.unwrap_err();
    assert!(err.to_string().contains("no bin/grafana"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("grafana"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers,
        vec!["11.3.0".to_owned()],
        "no partial downloads remain"
    );

    // A missing release cannot be installed, and says why.
    let err = installer.ensure(&v("11.9.9")).await.unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

/// The local test servers speak http.
fn insecure() -> DownloadPolicy {
    DownloadPolicy {
        allow_insecure: true,
        ..Default::default()
    }
}

fn one_release(version: &str) -> HashMap<String, Vec<u8>> {
    let good = tarball(version, "#!/bin/sh\n");
    HashMap::from([
        (
            format!("grafana-{version}.linux-amd64.tar.gz.sha256"),
            sha(&good).into_bytes(),
        ),
        (format!("grafana-{version}.linux-amd64.tar.gz"), good),
    ])
}

/// Attack (security review F19): a release served over plain http can be swapped together
/// with its checksum on the way. Without `allow_insecure`, nothing is fetched over http.
#[tokio::test]
async fn release_over_plain_http_is_refused() {
    let (base, releases) = start(one_release("11.3.0")).await;
    let dir = tempfile::tempdir().unwrap();
    let installer = Installer::new(None, dir.path().join("grafana"), &base);
    let err = installer.check(&v("11.3.0")).await.unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    let err = installer.ensure(&v("11.3.0")).await.unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    assert_eq!(releases.downloads.load(Ordering::SeqCst), 0);
    assert!(!dir.path().join("grafana/11.3.0").exists());
}

/// Attack: a download host that sends an endless (or huge) tarball fills the disk; the
/// download stops at the configured bound and leaves nothing behind.
#[tokio::test]
async fn oversized_release_is_refused() {
    let (base, _) = start(one_release("11.3.0")).await;
    let dir = tempfile::tempdir().unwrap();
    let installer = Installer::with_policy(
        None,
        dir.path().join("grafana"),
        &base,
        DownloadPolicy {
            max_bytes: 100,
            ..insecure()
        },
    );
    let err = installer.ensure(&v("11.3.0")).await.unwrap_err();
    assert!(
        err.to_string().contains("larger than the 100 bytes"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("grafana"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "nothing remains: {left:?}");
}

/// With `checksum_base_url`, the download host cannot vouch for its own tarball: a swapped
/// tarball whose checksum the download host publishes is still refused.
#[tokio::test]
async fn checksum_comes_from_the_configured_source() {
    let mut swapped = one_release("11.3.0");
    let evil = tarball("11.3.0", "#!/bin/sh\necho evil\n");
    swapped.insert(
        "grafana-11.3.0.linux-amd64.tar.gz.sha256".into(),
        sha(&evil).into_bytes(),
    );
    swapped.insert("grafana-11.3.0.linux-amd64.tar.gz".into(), evil);
    let (download, _) = start(swapped).await;
    let (checksums, _) = start(one_release("11.3.0")).await;
    let dir = tempfile::tempdir().unwrap();
    let installer = Installer::with_policy(
        None,
        dir.path().join("grafana"),
        &download,
        DownloadPolicy {
            checksum_base_url: Some(checksums.clone()),
            ..insecure()
        },
    );
    assert!(installer.checksum_url(&v("11.3.0")).starts_with(&checksums));
    let err = installer.ensure(&v("11.3.0")).await.unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[tokio::test]
async fn a_configured_binary_serves_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("opt/grafana/bin/grafana");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, "#!/bin/sh\n").unwrap();
    let installer = Installer::new(
        Some(bin.clone()),
        dir.path().join("cache"),
        "http://127.0.0.1:9/none",
    );
    installer.check(&v("12.0.0")).await.unwrap();
    let install = installer.ensure(&v("10.4.1")).await.unwrap();
    assert_eq!(install.bin, bin);
    assert_eq!(install.home, dir.path().join("opt/grafana"));
}
