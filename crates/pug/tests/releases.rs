//! Grafana releases through pug: downloaded from a (local) release server on first use, and an
//! upgrade to a release that cannot become healthy rolled back automatically.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::{standin_bin, Pug};

/// A Grafana-like release tarball whose `bin/grafana` runs the stand-in, optionally broken.
fn release(version: &str, broken: bool) -> Vec<u8> {
    let script = format!(
        "#!/bin/sh\nexec env STANDIN_VERSION={version}{} {} \"$@\"\n",
        if broken { " GF_STANDIN_MODE=crash" } else { "" },
        standin_bin().display()
    );
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    builder
        .append_data(
            &mut header,
            format!("grafana-v{version}/bin/grafana"),
            script.as_bytes(),
        )
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// Serves `files` under `/release/` on a background thread; returns the base URL.
fn serve(files: HashMap<String, Vec<u8>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let files = Arc::new(files);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/release/{name}",
                axum::routing::get(
                    move |axum::extract::Path(name): axum::extract::Path<String>| {
                        let files = files.clone();
                        async move {
                            files
                                .get(&name)
                                .cloned()
                                .ok_or(axum::http::StatusCode::NOT_FOUND)
                        }
                    },
                ),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}/release")
}

#[test]
fn releases_are_downloaded_and_bad_upgrades_rolled_back() {
    let mut files = HashMap::new();
    for (version, broken) in [("11.3.0", false), ("11.4.0", false), ("11.5.0", true)] {
        let tarball = release(version, broken);
        let name = format!("grafana-{version}.linux-amd64.tar.gz");
        files.insert(
            format!("{name}.sha256"),
            hex::encode(Sha256::digest(&tarball)).into_bytes(),
        );
        files.insert(name, tarball);
    }
    let base = serve(files);
    let pug = Pug::start(
        (22100, 22149),
        &[
            ("PUG_PROCESS_GRAFANA_BIN", ""),
            ("PUG_PROCESS_DOWNLOAD_BASE_URL", &base),
            // The local release server speaks http.
            ("PUG_PROCESS_ALLOW_INSECURE_DOWNLOAD", "true"),
            ("PUG_CONTROLLER_READY_TIMEOUT_SECS", "5"),
            ("PUG_CONTROLLER_MAX_BACKOFF_SECS", "1"),
        ],
    );

    // A version the release server does not have is refused at once, changing nothing.
    let err = pug.fails(&["tenant", "create", "acme", "--version", "11.9.0"]);
    assert!(err.contains("no such release"), "{err}");

    // The first tenant on a version downloads it.
    pug.ok(&[
        "tenant",
        "create",
        "acme",
        "--version",
        "11.3.0",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert!(pug.data.join("grafana/11.3.0/bin/grafana").is_file());
    let t = pug.tenant("acme");
    let endpoint = t["status"]["endpoints"][0].as_str().unwrap().to_owned();
    let (_, health) = support::http_get(&format!("http://{endpoint}/api/health")).unwrap();
    assert!(health.contains("11.3.0"), "{health}");

    // A good upgrade.
    pug.ok(&[
        "tenant",
        "upgrade",
        "acme",
        "--version",
        "11.4.0",
        "--wait",
        "--timeout",
        "60",
    ]);
    let t = pug.tenant("acme");
    let endpoint = t["status"]["endpoints"][0].as_str().unwrap().to_owned();
    let (_, health) = support::http_get(&format!("http://{endpoint}/api/health")).unwrap();
    assert!(health.contains("11.4.0"), "{health}");

    // A release that crash-loops: the upgrade is rolled back to 11.4.0, and --wait says so.
    let err = pug.fails(&[
        "tenant",
        "upgrade",
        "acme",
        "--version",
        "11.5.0",
        "--wait",
        "--timeout",
        "90",
    ]);
    assert!(err.contains("rolled back"), "{err}");
    let t = pug.wait_phase("acme", "ready", Duration::from_secs(60));
    assert_eq!(t["spec"]["version"], "11.4.0");
    assert_eq!(t["status"]["running_version"], "11.4.0");
    let events = t["events"].to_string();
    assert!(events.contains("UpgradeRolledBack"), "{events}");
    assert!(
        events.contains("upgrade to Grafana 11.5.0 failed"),
        "{events}"
    );
}
