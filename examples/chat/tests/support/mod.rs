//! Helpers shared by the chat's integration tests.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_example::server::{ChatServer, Config};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client connection to the chat.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The program at `path`, or a failed test that says which Debian package provides it.
///
/// A test that needs Prometheus or Chromium must fail when they are missing, never pass silently.
pub fn require_program(path: &str, apt_package: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} not found: this test needs the Debian package `{apt_package}` \
         (install it with `apt-get install {apt_package}`)",
        path.display()
    );
    path
}

/// A chat server running inside the test, on two ephemeral loopback ports.
pub struct TestServer {
    pub chat: SocketAddr,
    pub metrics: SocketAddr,
    pub server: ChatServer,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let chat = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (chat_addr, metrics_addr) = (chat.local_addr().unwrap(), metrics.local_addr().unwrap());
        let server = ChatServer::new(config);
        let (stop, stopped) = oneshot::channel();
        let serving = server.clone();
        tokio::spawn(async move {
            serving
                .serve(chat, metrics, async {
                    let _ = stopped.await;
                })
                .await
                .expect("chat server failed");
        });
        TestServer {
            chat: chat_addr,
            metrics: metrics_addr,
            server,
            stop: Some(stop),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.chat)
    }

    pub async fn connect(&self) -> Client {
        let (client, _) = tokio_tungstenite::connect_async(self.ws_url())
            .await
            .expect("connecting to the chat");
        client
    }

    /// Waits until `n` connections are open, and so subscribed to broadcasts.
    pub async fn wait_for_connections(&self, n: i64) {
        let what = format!("{n} open connections");
        wait_for(Duration::from_secs(10), &what, || async {
            (self.server.metrics().connections.get() == n).then_some(())
        })
        .await;
    }

    pub async fn metrics_text(&self) -> String {
        pug_test_support::http::get(format!("http://{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Sends one text frame.
pub async fn send_text(client: &mut Client, text: impl Into<String>) {
    client.send(Message::text(text.into())).await.unwrap();
}

/// The next text frame as JSON, failing the test after 10 s.
pub async fn next_json(client: &mut Client) -> serde_json::Value {
    let frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next().await {
                Some(Ok(Message::Text(text))) => break text,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("no frame within 10 s");
    serde_json::from_str(&frame).expect("the server sends JSON")
}

pub use pug_test_support::wait_for;

/// The value of the sample `name` (exact name and labels as written) in a text-format document.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
