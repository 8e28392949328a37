//! `chat-server`: the chat on `--port` (WebSocket at `/ws`, browser client at `/`) and its metrics on
//! `--metrics-port` (`/metrics`).
//!
//! Prints one line per listener on stdout (`chat listening on http://ADDR/`,
//! `metrics listening on http://ADDR/metrics`), so a caller that passed port 0 learns the port.

use std::net::IpAddr;

use anyhow::Context;
use chat_example::protocol::DEFAULT_MAX_MESSAGE_BYTES;
use chat_example::server::{ChatServer, Config};
use clap::Parser;
use tokio::net::TcpListener;

/// WebSocket chat server with Prometheus metrics.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on (both ports).
    #[arg(long, env = "CHAT_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port of the chat (WebSocket at /ws, browser client at /); 0 picks a free one.
    #[arg(long, env = "CHAT_PORT", default_value_t = 3000)]
    port: u16,
    /// Port of the metrics endpoint (/metrics); 0 picks a free one.
    #[arg(long, env = "CHAT_METRICS_PORT", default_value_t = 8081)]
    metrics_port: u16,
    /// Largest accepted message in bytes; larger ones are refused with an error frame.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();

    let chat = TcpListener::bind((cli.host, cli.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", cli.host, cli.port))?;
    let metrics = TcpListener::bind((cli.host, cli.metrics_port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", cli.host, cli.metrics_port))?;
    println!("chat listening on http://{}/", chat.local_addr()?);
    println!(
        "metrics listening on http://{}/metrics",
        metrics.local_addr()?
    );

    let server = ChatServer::new(Config {
        max_message_bytes: cli.max_message_bytes,
    });
    server.serve(chat, metrics, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (what `docker stop` sends).
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
