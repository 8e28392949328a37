//! The chat example: the seed's monitored application, rebuilt as real software.
//!
//! A WebSocket chat server that broadcasts each valid message to every client, counts what it sees in
//! Prometheus metrics served on a separate port, and answers a bad message with an error frame to its
//! sender only. A chaos client sends garbage so the error metrics (and the alert on them) have
//! something to show.
//!
//! # Layout
//! - [`protocol`]: the wire format (what a client sends, what the server broadcasts, the error frame)
//!   and the validation that sorts a frame into a message or a rejection reason.
//! - [`metrics`]: the chat's metric families and the `/metrics` encoding.
//! - [`server`]: the axum routers (chat + browser client, metrics) and the per-connection loop.
//! - [`chaos`]: the garbage generator behind the `chat-chaos` binary.
//!
//! The binaries `chat-server` and `chat-chaos` only parse flags and call into these modules.

pub mod chaos;
pub mod metrics;
pub mod protocol;
pub mod server;
