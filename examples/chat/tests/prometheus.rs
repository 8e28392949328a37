//! End to end with a real Prometheus (Debian's `prometheus` package): it scrapes `chat-server`
//! every second with the example's own `rules.yml`, `chat-chaos` sends its garbage, and the
//! `ChatErrorsHigh` alert must become firing, read from Prometheus' HTTP API.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{require_program, wait_for};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A child process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Queries `path` on Prometheus and returns the `data` of a successful answer.
async fn api(base: &str, path: &str) -> Option<Value> {
    let body: Value = pug_test_support::http::get(format!("{base}{path}"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    (body["status"] == "success").then(|| body["data"].clone())
}

#[tokio::test]
async fn chaos_makes_the_prometheus_alert_fire() {
    let prometheus = require_program("/usr/bin/prometheus", "prometheus");

    // chat-server, on ephemeral ports it reports on stdout.
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let chat_line = lines.next_line().await.unwrap().unwrap();
    let metrics_line = lines.next_line().await.unwrap().unwrap();
    let chat = chat_line
        .trim_start_matches("chat listening on http://")
        .trim_end_matches('/')
        .to_owned();
    let metrics = metrics_line
        .trim_start_matches("metrics listening on http://")
        .trim_end_matches("/metrics")
        .to_owned();

    // Prometheus with a 1 s scrape and evaluation interval and the example's rules.
    let dir = tempfile::tempdir().unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: chat\n    static_configs:\n      - targets: [{metrics:?}]\n",
            rules = rules.display().to_string(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Reaped(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            // Port 0: Prometheus binds one of its own; the test reads it from the kernel.
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_path = dir.path().join("prometheus.log");
    let show_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let pid = _prometheus.0.id();
    let addr = wait_for(Duration::from_secs(60), "Prometheus to listen", || async {
        pug_test_support::net::listening_addrs(pid).first().copied()
    })
    .await;
    let base = format!("http://{addr}");

    // Ready, and the chat target scraped successfully at least once.
    wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape chat-server",
        || async {
            let data = api(&base, "/api/v1/query?query=up%7Bjob%3D%22chat%22%7D").await?;
            (data["result"][0]["value"][1] == "1").then_some(())
        },
    )
    .await;

    let chaos = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-chaos"))
        .args([
            "--url",
            &format!("ws://{chat}/ws"),
            "--count",
            "10",
            "--interval",
            "100ms",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        chaos.status.success(),
        "chat-chaos failed: {}",
        String::from_utf8_lossy(&chaos.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&chaos.stdout).trim(),
        "sent 10 bad frames; the server refused 10"
    );

    let alert = tokio::time::timeout(
        Duration::from_secs(60),
        wait_for(
            Duration::from_secs(60),
            "ChatErrorsHigh to fire",
            || async {
                let data = api(&base, "/api/v1/alerts").await?;
                data["alerts"]
                    .as_array()?
                    .iter()
                    .find(|a| {
                        a["labels"]["alertname"] == "ChatErrorsHigh" && a["state"] == "firing"
                    })
                    .cloned()
            },
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("no firing alert; Prometheus log:\n{}", show_log()));
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("The chat server refused")),
        "{alert}"
    );

    // The scrapes saw all ten, under their reason.
    wait_for(
        Duration::from_secs(30),
        "chat_errors_total to reach 10",
        || async {
            let data = api(
                &base,
                "/api/v1/query?query=chat_errors_total%7Breason%3D%22invalid_json%22%7D",
            )
            .await?;
            (data["result"][0]["value"][1] == "10").then_some(())
        },
    )
    .await;
    drop(server);
}
