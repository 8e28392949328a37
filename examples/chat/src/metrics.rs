//! The chat's metrics and their `/metrics` encoding.
//!
//! Families (issue 6 B): `chat_connections` (gauge, open now), `chat_connections_total` (counter,
//! ever accepted), `chat_messages_total` (counter, valid messages broadcast) and `chat_errors_total`
//! (counter by `reason`: `invalid_json`, `missing_field`, `too_large`; every reason starts at 0 so
//! `increase()` sees the first error).
//!
//! # Why the endpoint serves the Prometheus text format 0.0.4, not OpenMetrics
//! The registry comes from [`pug_metrics::new_registry`] and is encoded by [`pug_metrics::encode`]
//! (OpenMetrics). Two things make that output unfit to serve as is here:
//! - OpenMetrics names a counter's family without `_total`, so the gauge `chat_connections` and the
//!   counter `chat_connections_total` would be two families both named `chat_connections`, which
//!   OpenMetrics forbids. In the text format 0.0.4 a counter's TYPE line names the full sample name,
//!   so both names are legal side by side (as `prometheus_http_requests_total` is beside its peers).
//! - `promtool check metrics` (Prometheus 2.42, Debian bookworm) parses the text format 0.0.4 only
//!   and reports every OpenMetrics counter as `no help text`.
//!
//! So [`encode_text`] rewrites the OpenMetrics document into the text format 0.0.4, served with
//! [`TEXT_CONTENT_TYPE`]. Both Prometheus 2 and 3 accept it (an explicit Content-Type is sent, which
//! Prometheus 3 requires).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::protocol::ErrorReason;

/// Content-Type of [`encode_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The label set of `chat_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Why the frame was refused.
    pub reason: ErrorReason,
}

impl EncodeLabelValue for ErrorReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// Handles on the chat's metric families. Cloning shares the underlying values.
#[derive(Debug, Clone, Default)]
pub struct ChatMetrics {
    /// Connections open right now.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Valid messages broadcast since start.
    pub messages: Counter,
    /// Refused frames since start, by reason.
    pub errors: Family<ErrorLabels, Counter>,
}

impl ChatMetrics {
    /// Creates the families, registers them on `registry` and starts every error reason at zero.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ChatMetrics::default();
        registry.register(
            "chat_connections",
            "WebSocket connections open now",
            metrics.connections.clone(),
        );
        // prometheus-client appends `_total` to a counter's name.
        registry.register(
            "chat_connections",
            "WebSocket connections accepted since the server started",
            metrics.connections_total.clone(),
        );
        registry.register(
            "chat_messages",
            "Valid chat messages broadcast since the server started",
            metrics.messages.clone(),
        );
        registry.register(
            "chat_errors",
            "Frames refused since the server started, by reason",
            metrics.errors.clone(),
        );
        for reason in ErrorReason::ALL {
            let _ = metrics.errors.get_or_create(&ErrorLabels { reason });
        }
        metrics
    }

    /// Counts one refused frame.
    pub fn error(&self, reason: ErrorReason) {
        self.errors.get_or_create(&ErrorLabels { reason }).inc();
    }
}

/// Encodes `registry` in the Prometheus text format 0.0.4 (see the module docs for why).
pub fn encode_text(registry: &Registry) -> String {
    pug_metrics::encode(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_families_are_encoded_with_every_reason() {
        let mut registry = pug_metrics::new_registry();
        let metrics = ChatMetrics::register(&mut registry);
        metrics.connections.inc();
        metrics.connections_total.inc();
        metrics.error(ErrorReason::TooLarge);
        let text = encode_text(&registry);
        assert!(
            text.contains("# TYPE chat_connections gauge\nchat_connections 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE chat_connections_total counter\nchat_connections_total 1\n"),
            "{text}"
        );
        assert!(text.contains("chat_messages_total 0\n"), "{text}");
        assert!(
            text.contains("chat_errors_total{reason=\"too_large\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chat_errors_total{reason=\"invalid_json\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("chat_errors_total{reason=\"missing_field\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
