//! `chat-chaos`: connects to the chat and sends garbage, by default ten frames of `garbage` one
//! second apart (the seed's chaos), then exits 0.

use std::time::Duration;

use chat_example::chaos::{parse_duration, run, Kind, Plan};
use clap::Parser;

/// Sends bad frames to a chat server so its error metrics move.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The chat's WebSocket URL.
    #[arg(long, env = "CHAT_URL", default_value = "ws://127.0.0.1:3000/ws")]
    url: String,
    /// How many frames to send.
    #[arg(long, default_value_t = 10)]
    count: u32,
    /// Pause before each frame: 250ms, 1s, 2m, or a number of seconds.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// What kind of garbage to send.
    #[arg(long, value_enum, default_value_t = Kind::InvalidJson)]
    kind: Kind,
    /// Size in bytes of a too-large frame (the server's default limit is 4096).
    #[arg(long, default_value_t = 64 * 1024)]
    too_large_bytes: usize,
    /// How long to keep retrying the connection while the server starts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    connect_timeout: Duration,
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
    let outcome = run(&Plan {
        url: cli.url,
        count: cli.count,
        interval: cli.interval,
        kind: cli.kind,
        too_large_bytes: cli.too_large_bytes,
        connect_timeout: cli.connect_timeout,
    })
    .await?;
    println!(
        "sent {} bad frames; the server refused {}",
        outcome.sent, outcome.refused
    );
    Ok(())
}
