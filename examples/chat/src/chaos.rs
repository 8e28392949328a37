//! The chaos client: connects to the chat and sends garbage, like the seed's `chaos.ts` (ten frames
//! of `garbage`, one second apart), with the count, pace and kind of garbage adjustable.

use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::ErrorFrame;

/// What kind of bad frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The text `garbage`, not JSON at all (the seed's chaos).
    InvalidJson,
    /// JSON without the `message` field.
    MissingField,
    /// A well-formed message larger than the server's limit.
    TooLarge,
    /// The three kinds in turn.
    Mixed,
}

/// What to send, where, and how fast.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The chat's WebSocket URL, e.g. `ws://127.0.0.1:3000/ws`.
    pub url: String,
    /// How many frames to send.
    pub count: u32,
    /// Pause before each frame (the seed waits one second before the first one too).
    pub interval: Duration,
    /// What kind of garbage.
    pub kind: Kind,
    /// Size of a `too-large` frame, in bytes; must exceed the server's limit to be refused.
    pub too_large_bytes: usize,
    /// How long to keep retrying the first connection (the server may still be starting).
    pub connect_timeout: Duration,
}

/// What happened, for the summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Frames sent.
    pub sent: u32,
    /// Error frames the server sent back.
    pub refused: u32,
}

/// The `i`-th frame (counting from 0) of `plan`.
pub fn payload(plan: &Plan, i: u32) -> String {
    let kind = match plan.kind {
        Kind::Mixed => [Kind::InvalidJson, Kind::MissingField, Kind::TooLarge][i as usize % 3],
        other => other,
    };
    match kind {
        Kind::InvalidJson | Kind::Mixed => "garbage".to_owned(),
        Kind::MissingField => format!(r#"{{"name":"chaos","note":"frame {i} has no message"}}"#),
        Kind::TooLarge => {
            let envelope = r#"{"name":"chaos","message":""}"#.len();
            let filler = plan.too_large_bytes.saturating_sub(envelope).max(1);
            serde_json::json!({ "name": "chaos", "message": "x".repeat(filler) }).to_string()
        }
    }
}

/// Connects (retrying until `connect_timeout`), sends the frames, then waits a little for the
/// server's answers and closes the connection.
pub async fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + plan.connect_timeout;
    let socket = loop {
        match tokio_tungstenite::connect_async(plan.url.as_str()).await {
            Ok((socket, _)) => break socket,
            Err(error) if Instant::now() < deadline => {
                tracing::info!(%error, url = %plan.url, "chat not reachable yet; retrying");
                sleep(Duration::from_millis(500)).await;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot connect to {}", plan.url))
            }
        }
    };
    tracing::info!(url = %plan.url, "connected");
    let (mut sink, mut stream) = socket.split();

    // Read answers while sending, so the server never blocks on a full socket buffer.
    let reader = tokio::spawn(async move {
        let mut refused = 0u32;
        while let Some(Ok(frame)) = stream.next().await {
            if let Message::Text(text) = frame {
                if let Ok(error) = serde_json::from_str::<ErrorFrame>(&text) {
                    refused += 1;
                    tracing::info!(error = %error.error, detail = %error.detail, "server refused");
                }
            }
        }
        refused
    });

    for i in 0..plan.count {
        sleep(plan.interval).await;
        sink.send(Message::text(payload(plan, i)))
            .await
            .context("sending to the chat")?;
        tracing::info!(frame = i + 1, of = plan.count, "sent garbage");
    }
    // Give the server a moment to answer the last frames, then close.
    sleep(Duration::from_millis(200)).await;
    let _ = sink.send(Message::Close(None)).await;
    let refused = timeout(Duration::from_secs(5), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    Ok(Outcome {
        sent: plan.count,
        refused,
    })
}

/// Parses `250ms`, `1s`, `1.5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 250ms, 1s or 2m"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("`{text}` is not a non-negative duration"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_message, ErrorReason};

    fn plan(kind: Kind) -> Plan {
        Plan {
            url: String::new(),
            count: 3,
            interval: Duration::ZERO,
            kind,
            too_large_bytes: 5000,
            connect_timeout: Duration::ZERO,
        }
    }

    #[test]
    fn each_kind_is_refused_for_its_reason() {
        let reason = |kind, i| {
            parse_message(&payload(&plan(kind), i), 4096)
                .unwrap_err()
                .reason
        };
        assert_eq!(reason(Kind::InvalidJson, 0), ErrorReason::InvalidJson);
        assert_eq!(reason(Kind::MissingField, 0), ErrorReason::MissingField);
        assert_eq!(reason(Kind::TooLarge, 0), ErrorReason::TooLarge);
        assert_eq!(reason(Kind::Mixed, 0), ErrorReason::InvalidJson);
        assert_eq!(reason(Kind::Mixed, 1), ErrorReason::MissingField);
        assert_eq!(reason(Kind::Mixed, 2), ErrorReason::TooLarge);
        assert_eq!(payload(&plan(Kind::TooLarge), 0).len(), 5000);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
