//! `promtool check metrics` on what `chat-server` serves at `/metrics`.

use chat_example::protocol::{ErrorReason, DEFAULT_MAX_MESSAGE_BYTES};
use chat_example::server::{ChatServer, Config};
use monitoring_pack::{assert_success, repo_root, run_promtool};
use tokio::net::TcpListener;

#[tokio::test]
async fn chat_server_metrics_pass_promtool_check_metrics() {
    let chat = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let server = ChatServer::new(Config {
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    });
    // Non-zero values everywhere, so nothing is linted only in its initial state.
    server.metrics().connections.inc();
    server.metrics().connections_total.inc();
    server.metrics().messages.inc();
    for reason in ErrorReason::ALL {
        server.metrics().error(reason);
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(chat, metrics, async {
        let _ = stopped.await;
    }));

    let text = pug_test_support::http::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("chat_errors_total{reason=\"too_large\"} 1"),
        "{text}"
    );

    let out = run_promtool(&repo_root(), &["check", "metrics"], Some(&text));
    assert_success("promtool check metrics", &out);
    // promtool exits 0 only when it has nothing to say, but be explicit: no lint findings at all.
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        findings.trim().is_empty(),
        "promtool findings:\n{findings}\n---\n{text}"
    );

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
