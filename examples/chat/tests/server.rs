//! The chat server seen from its clients: broadcast, refusals answered to the sender only, metrics.

mod support;

use std::process::Stdio;
use std::time::Duration;

use chat_example::protocol::DEFAULT_MAX_MESSAGE_BYTES;
use chat_example::server::{Config, PROTOCOL_LIMIT_BYTES};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use support::{next_json, sample, send_text, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

fn config() -> Config {
    Config {
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    }
}

#[tokio::test]
async fn a_valid_message_reaches_every_client_including_the_sender() {
    let server = TestServer::start(config()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.connect().await);
    }
    server.wait_for_connections(3).await;

    send_text(
        &mut clients[1],
        r#"{"name":"ann","message":"hello","ignored":true}"#,
    )
    .await;
    for client in &mut clients {
        assert_eq!(
            next_json(client).await,
            json!({"name": "ann", "message": "hello"})
        );
    }

    let text = server.metrics_text().await;
    assert_eq!(sample(&text, "chat_messages_total"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "chat_connections"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "chat_connections_total"), Some(3.0), "{text}");
}

#[tokio::test]
async fn each_bad_kind_is_counted_and_answered_to_its_sender_only() {
    let server = TestServer::start(config()).await;
    let mut bad = server.connect().await;
    let mut good = server.connect().await;
    let mut bystander = server.connect().await;
    server.wait_for_connections(3).await;

    let too_large = json!({"name": "x", "message": "y".repeat(DEFAULT_MAX_MESSAGE_BYTES)});
    let cases: [(Message, &str); 5] = [
        (Message::text("garbage"), "invalid_json"),
        (Message::binary(vec![0u8, 159, 146, 150]), "invalid_json"),
        (Message::text(r#"{"name":"ann"}"#), "missing_field"),
        (
            Message::text(r#"{"name":7,"message":"hi"}"#),
            "missing_field",
        ),
        (Message::text(too_large.to_string()), "too_large"),
    ];
    for (frame, reason) in cases {
        bad.send(frame).await.unwrap();
        let answer = next_json(&mut bad).await;
        assert_eq!(answer["error"], reason, "{answer}");
        assert!(answer["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }

    // The others saw none of it: their next frame is the next valid message, which the bad client
    // (still connected) receives too.
    send_text(&mut good, r#"{"name":"bob","message":"still here"}"#).await;
    let expected = json!({"name": "bob", "message": "still here"});
    assert_eq!(next_json(&mut bystander).await, expected);
    assert_eq!(next_json(&mut good).await, expected);
    assert_eq!(next_json(&mut bad).await, expected);

    let text = server.metrics_text().await;
    assert_eq!(
        sample(&text, r#"chat_errors_total{reason="invalid_json"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"chat_errors_total{reason="missing_field"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"chat_errors_total{reason="too_large"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "chat_messages_total"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "chat_connections"), Some(3.0), "{text}");
}

#[tokio::test]
async fn a_frame_above_the_protocol_limit_closes_only_its_connection() {
    let server = TestServer::start(config()).await;
    let mut huge = server.connect().await;
    let mut other = server.connect().await;
    server.wait_for_connections(2).await;

    // Sending may itself fail once the server drops the connection mid-frame.
    let _ = huge
        .send(Message::text("z".repeat(PROTOCOL_LIMIT_BYTES + 1)))
        .await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match huge.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the oversized sender's connection stayed open"
    );

    send_text(&mut other, r#"{"name":"cy","message":"unaffected"}"#).await;
    assert_eq!(
        next_json(&mut other).await,
        json!({"name": "cy", "message": "unaffected"})
    );
    let text = server.metrics_text().await;
    assert_eq!(
        sample(&text, r#"chat_errors_total{reason="too_large"}"#),
        Some(1.0),
        "{text}"
    );
    server.wait_for_connections(1).await;
}

#[tokio::test]
async fn metrics_and_the_browser_client_are_served() {
    let server = TestServer::start(config()).await;

    let metrics = pug_test_support::http::get(format!("http://{}/metrics", server.metrics))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = metrics.text().await.unwrap();
    for reason in ["invalid_json", "missing_field", "too_large"] {
        let name = format!(r#"chat_errors_total{{reason="{reason}"}}"#);
        assert_eq!(sample(&text, &name), Some(0.0), "{text}");
    }
    assert!(text.contains("process_resident_memory_bytes "), "{text}");

    // The chat port serves the client but not the metrics.
    let page = pug_test_support::http::get(format!("http://{}/", server.chat))
        .await
        .unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page
        .text()
        .await
        .unwrap()
        .contains(r#"<script src="chat.js">"#));
    let js = pug_test_support::http::get(format!("http://{}/chat.js", server.chat))
        .await
        .unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let missing = pug_test_support::http::get(format!("http://{}/metrics", server.chat))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// The real binary: prints where it listens when given port 0, and stops cleanly on SIGTERM,
/// closing open WebSockets instead of waiting for them.
#[tokio::test]
async fn the_binary_reports_its_ports_and_stops_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let chat_line = lines.next_line().await.unwrap().unwrap();
    let metrics_line = lines.next_line().await.unwrap().unwrap();
    let chat = chat_line
        .strip_prefix("chat listening on http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line {chat_line:?}"));
    let metrics = metrics_line
        .strip_prefix("metrics listening on ")
        .unwrap_or_else(|| panic!("unexpected second line {metrics_line:?}"));

    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{chat}/ws"))
        .await
        .unwrap();
    send_text(&mut client, r#"{"name":"dee","message":"from the binary"}"#).await;
    assert_eq!(next_json(&mut client).await["message"], "from the binary");
    let text = pug_test_support::http::get(metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sample(&text, "chat_messages_total"), Some(1.0), "{text}");

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("chat-server did not stop within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    // The client was told the server is going away.
    match client.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
}
