//! The renderer's Prometheus metrics.
//!
//! Owns: the metric families (the reference's `http_request_duration_seconds` and `up`, plus the
//! engine's own), registered on a registry from [`pug_metrics::new_registry`] so the standard
//! `process_*` metrics come along.
//!
//! Must not: serve HTTP (the API does, through [`Metrics::encode`]) or decide anything.

use std::sync::atomic::AtomicI64;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Buckets of the reference's request histogram, in seconds.
const HTTP_BUCKETS: [f64; 9] = [0.5, 1.0, 3.0, 5.0, 7.0, 10.0, 20.0, 30.0, 60.0];
/// Finer buckets for render durations: a warm render takes well under a second.
const RENDER_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];

/// Label of the HTTP histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// HTTP status code of the response.
    pub status_code: u16,
}

/// Labels of the render histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenderLabels {
    /// png, pdf or csv.
    pub encoding: &'static str,
    /// success, timeout, refused, busy, browser_failure, error.
    pub result: &'static str,
}

/// Why Chromium was (re)started.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RestartReason {
    /// The process exited or its connection dropped.
    Crashed,
    /// It stopped answering the health ping.
    Hung,
    /// It reached `renders_per_browser`.
    RenderLimit,
    /// Its resident memory passed `max_browser_rss_bytes`.
    Memory,
}

impl RestartReason {
    /// Every reason, to export each at 0 from the start.
    pub const ALL: [RestartReason; 4] = [
        RestartReason::Crashed,
        RestartReason::Hung,
        RestartReason::RenderLimit,
        RestartReason::Memory,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Crashed => "crashed",
            RestartReason::Hung => "hung",
            RestartReason::RenderLimit => "render_limit",
            RestartReason::Memory => "memory",
        }
    }
}

impl EncodeLabelValue for RestartReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Label of the restart counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabel {
    /// Why.
    pub reason: RestartReason,
}

/// How a page was found ready.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReadinessMode {
    /// Grafana called `__grafanaImageRendererMessageChannel` with `REPORT_RENDER_COMPLETE`.
    Binding,
    /// A scenes dashboard with no running query and an idle network.
    Queries,
    /// A pre-scenes page whose `window.panelsRendered` reached its panel count.
    LegacyPanels,
    /// Any other page: the network stayed idle for the quiet period.
    NetworkIdle,
}

impl ReadinessMode {
    /// Every mode, to export each at 0 from the start.
    pub const ALL: [ReadinessMode; 4] = [
        ReadinessMode::Binding,
        ReadinessMode::Queries,
        ReadinessMode::LegacyPanels,
        ReadinessMode::NetworkIdle,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadinessMode::Binding => "binding",
            ReadinessMode::Queries => "queries",
            ReadinessMode::LegacyPanels => "legacy_panels",
            ReadinessMode::NetworkIdle => "network_idle",
        }
    }
}

impl EncodeLabelValue for ReadinessMode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Label of the readiness counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// Which signal decided.
    pub mode: ReadinessMode,
}

/// Label of the page counter: did the render start on a fresh context or a reused page.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PageLabel {
    /// `fresh` or `reused`.
    pub page: &'static str,
}

/// Every metric of the renderer.
pub struct Metrics {
    /// Registry with `process_*` and everything below.
    registry: Registry,
    /// `http_request_duration_seconds{status_code}`, as the reference.
    pub http_duration: Family<StatusLabel, Histogram>,
    /// `pug_renderer_renders_in_flight`.
    pub in_flight: Gauge<i64, AtomicI64>,
    /// `pug_renderer_queued_renders`.
    pub queued: Gauge<i64, AtomicI64>,
    /// `pug_renderer_render_duration_seconds{encoding,result}`.
    pub render_duration: Family<RenderLabels, Histogram>,
    /// `pug_renderer_browser_restarts_total{reason}`.
    pub restarts: Family<RestartLabel, Counter>,
    /// `pug_renderer_readiness_mode_total{mode}`.
    pub readiness: Family<ModeLabel, Counter>,
    /// `pug_renderer_pages_total{page}`.
    pub pages: Family<PageLabel, Counter>,
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let mut registry = pug_metrics::new_registry();
        let http_duration = Family::<StatusLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(HTTP_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "duration histogram of http responses labeled with: status_code",
            Unit::Seconds,
            http_duration.clone(),
        );
        let up: Gauge<i64, AtomicI64> = Gauge::default();
        up.set(1);
        registry.register("up", "1 = up, 0 = not up", up);

        let sub = registry.sub_registry_with_prefix("pug_renderer");
        let in_flight = Gauge::default();
        sub.register(
            "renders_in_flight",
            "Renders running in Chromium now.",
            in_flight.clone(),
        );
        let queued = Gauge::default();
        sub.register(
            "queued_renders",
            "Renders waiting for a free slot.",
            queued.clone(),
        );
        let render_duration = Family::<RenderLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(RENDER_BUCKETS)) as fn() -> Histogram,
        );
        sub.register_with_unit(
            "render_duration",
            "Time from admission to the finished image, PDF or CSV.",
            Unit::Seconds,
            render_duration.clone(),
        );
        let restarts = Family::<RestartLabel, Counter>::default();
        for reason in RestartReason::ALL {
            let _ = restarts.get_or_create(&RestartLabel { reason });
        }
        sub.register(
            "browser_restarts",
            "Chromium processes replaced, by reason.",
            restarts.clone(),
        );
        let readiness = Family::<ModeLabel, Counter>::default();
        for mode in ReadinessMode::ALL {
            let _ = readiness.get_or_create(&ModeLabel { mode });
        }
        sub.register(
            "readiness_mode",
            "Renders by the signal that found the page ready.",
            readiness.clone(),
        );
        let pages = Family::<PageLabel, Counter>::default();
        for page in ["fresh", "reused"] {
            let _ = pages.get_or_create(&PageLabel { page });
        }
        sub.register(
            "pages",
            "Renders by the page they started on: a fresh incognito context, or a page reused \
             (and wiped) for its scope (renderer page_reuse > 1).",
            pages.clone(),
        );
        Self {
            registry,
            http_duration,
            in_flight,
            queued,
            render_duration,
            restarts,
            readiness,
            pages,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        pug_metrics::encode(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_start_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.contains("pug_renderer_browser_restarts_total{reason=\"memory\"} 0"));
        assert!(text.contains("pug_renderer_readiness_mode_total{mode=\"binding\"} 0"));
        assert!(text.contains("up 1"));
        assert!(text.contains("pug_renderer_pages_total{page=\"reused\"} 0"));
    }
}
