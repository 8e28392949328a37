//! The chat server: a WebSocket endpoint that broadcasts valid messages, the browser client, and
//! the metrics endpoint on its own listener.
//!
//! Each connection runs one loop (`handle_socket`) that waits on three things: a frame from its
//! client, a broadcast from any client, and server shutdown. A refused frame is counted and answered
//! on that connection only; nothing about it reaches the broadcast channel, so other clients never
//! see it.

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics::{encode_text, ChatMetrics, TEXT_CONTENT_TYPE};
use crate::protocol::{parse_message, ErrorFrame, ErrorReason, Rejection};

/// The browser client's page, served at `/`.
const INDEX_HTML: &str = include_str!("../static/index.html");
/// The browser client's script, served at `/chat.js`.
const CHAT_JS: &str = include_str!("../static/chat.js");

/// Frames above this size are cut off by the WebSocket layer itself (the connection is closed)
/// instead of being answered with an error frame, so a client cannot make the server buffer an
/// unbounded message. Raised to the configured limit if that is larger.
pub const PROTOCOL_LIMIT_BYTES: usize = 1024 * 1024;

/// How many broadcast messages a slow client may fall behind before it skips some.
const BROADCAST_CAPACITY: usize = 256;

/// Settings of one chat server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest accepted message, in bytes of its text frame.
    pub max_message_bytes: usize,
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    config: Config,
    metrics: ChatMetrics,
    /// The metrics registry, read at each scrape.
    registry: Registry,
    /// Every valid message, serialized once, goes here; each connection holds a receiver.
    broadcast: broadcast::Sender<Utf8Bytes>,
    /// Cancelled when the server shuts down, so open connections close instead of holding it up.
    shutdown: CancellationToken,
}

/// A chat server's routers, sharing one state.
#[derive(Debug, Clone)]
pub struct ChatServer {
    shared: Arc<Shared>,
}

impl ChatServer {
    /// Creates the state and registers the chat metrics on a fresh [`pug_metrics::new_registry`].
    pub fn new(config: Config) -> Self {
        let mut registry = pug_metrics::new_registry();
        let metrics = ChatMetrics::register(&mut registry);
        let (broadcast, _) = broadcast::channel(BROADCAST_CAPACITY);
        ChatServer {
            shared: Arc::new(Shared {
                config,
                metrics,
                registry,
                broadcast,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Handles on the live metric values (tests read them directly).
    pub fn metrics(&self) -> &ChatMetrics {
        &self.shared.metrics
    }

    /// `/` (browser client), `/chat.js` and `/ws` (the chat itself).
    pub fn chat_router(&self) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/chat.js", get(chat_js))
            .route("/ws", get(ws_upgrade))
            .with_state(self.shared.clone())
    }

    /// `/metrics`, meant for its own listener so the chat port exposes nothing but the chat.
    pub fn metrics_router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .with_state(self.shared.clone())
    }

    /// Serves the chat on `chat` and the metrics on `metrics` until `shutdown` completes, then
    /// closes every open WebSocket (close code 1001, going away) and returns.
    pub async fn serve(
        self,
        chat: TcpListener,
        metrics: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let token = self.shared.shutdown.clone();
        tokio::spawn({
            let token = token.clone();
            async move {
                shutdown.await;
                token.cancel();
            }
        });
        let chat_server = axum::serve(chat, self.chat_router())
            .with_graceful_shutdown(token.clone().cancelled_owned());
        let metrics_server = axum::serve(metrics, self.metrics_router())
            .with_graceful_shutdown(token.cancelled_owned());
        tokio::try_join!(chat_server.into_future(), metrics_server.into_future())?;
        Ok(())
    }
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn chat_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CHAT_JS,
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
        encode_text(&shared.registry),
    )
        .into_response()
}

async fn ws_upgrade(ws: WebSocketUpgrade, State(shared): State<Arc<Shared>>) -> Response {
    let limit = PROTOCOL_LIMIT_BYTES.max(shared.config.max_message_bytes);
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| handle_socket(socket, shared))
}

/// Keeps the `chat_connections` gauge right however the connection loop ends.
struct OpenConnection(ChatMetrics);

impl OpenConnection {
    fn new(metrics: &ChatMetrics) -> Self {
        metrics.connections.inc();
        metrics.connections_total.inc();
        OpenConnection(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// One connection's life: receive, validate, broadcast or answer; forward broadcasts.
async fn handle_socket(socket: WebSocket, shared: Arc<Shared>) {
    // Subscribe before reading anything, so this client sees every message sent after it joined,
    // its own included; and before counting the connection, so a client counted in
    // `chat_connections` is sure to receive the next broadcast.
    let mut broadcasts = shared.broadcast.subscribe();
    let _open = OpenConnection::new(&shared.metrics);
    let (mut sink, mut stream) = socket.split();
    tracing::debug!("connection opened");

    loop {
        tokio::select! {
            // Cancel-safe: `StreamExt::next` on the WebSocket loses nothing when dropped.
            incoming = stream.next() => {
                let frame = match incoming {
                    None => break,
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => {
                        if is_capacity_error(error) {
                            // The WebSocket layer refused a frame above PROTOCOL_LIMIT_BYTES and
                            // the connection cannot continue; still count it.
                            shared.metrics.error(ErrorReason::TooLarge);
                            tracing::warn!("frame above the protocol limit; connection closed");
                        }
                        break;
                    }
                };
                let text = match frame {
                    Message::Text(text) => text,
                    Message::Binary(_) => {
                        let rejection = Rejection {
                            reason: ErrorReason::InvalidJson,
                            detail: "binary frames are not chat messages; send JSON text".into(),
                        };
                        if reject(&shared, &mut sink, &rejection).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Message::Close(_) => break,
                    // axum answers pings itself.
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                match parse_message(&text, shared.config.max_message_bytes) {
                    Ok(message) => {
                        shared.metrics.messages.inc();
                        let json = serde_json::to_string(&message)
                            .expect("a struct of two strings always serializes");
                        // No receiver means no client, which cannot happen while this one is
                        // subscribed; ignoring the error is therefore safe.
                        let _ = shared.broadcast.send(Utf8Bytes::from(json));
                    }
                    Err(rejection) => {
                        if reject(&shared, &mut sink, &rejection).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // Cancel-safe: `broadcast::Receiver::recv` keeps its position when dropped.
            outgoing = broadcasts.recv() => match outgoing {
                Ok(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "slow client skipped broadcast messages");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            () = shared.shutdown.cancelled() => {
                let close = CloseFrame { code: 1001, reason: "server shutting down".into() };
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
        }
    }
    tracing::debug!("connection closed");
}

/// Counts a refused frame and sends its error frame to the sender only.
async fn reject(
    shared: &Shared,
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    rejection: &Rejection,
) -> Result<(), axum::Error> {
    shared.metrics.error(rejection.reason);
    tracing::info!(reason = %rejection.reason, detail = %rejection.detail, "frame refused");
    let frame = serde_json::to_string(&ErrorFrame::from(rejection))
        .expect("a struct of two strings always serializes");
    sink.send(Message::Text(Utf8Bytes::from(frame))).await
}

/// Whether a receive error is tungstenite refusing a frame over the size limit.
fn is_capacity_error(error: axum::Error) -> bool {
    matches!(
        error
            .into_inner()
            .downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
        Some(tokio_tungstenite::tungstenite::Error::Capacity(_))
    )
}
