//! The one metrics library of every pug role.
//!
//! Owns: the construction of a [`Registry`] that already carries the standard `process_*` metrics,
//! the encoding of a registry into the OpenMetrics text format, and the exact `Content-Type` that
//! goes with it (Prometheus 3 refuses a scrape whose Content-Type is blank).
//!
//! Must not: know about any role's own metrics. Each role registers its families on the registry it
//! gets from [`new_registry`] and serves [`encode`] at `/metrics`.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

pub use prometheus_client;

/// The Content-Type of [`encode`]'s output (Prometheus text format 0.0.4), to be sent verbatim
/// with every `/metrics` response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Content-Type of [`encode_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry with the standard `process_*` collector already registered.
pub fn new_registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector::new()));
    registry
}

/// Encodes a registry in the Prometheus text format 0.0.4, which every Prometheus scrapes and
/// which `promtool check metrics` (Debian's 2.x included) reads; OpenMetrics is not understood
/// by the latter, so it cannot be what pug serves by default.
pub fn encode(registry: &Registry) -> String {
    openmetrics_to_text(&encode_openmetrics(registry))
}

/// Encodes a registry in the OpenMetrics text format (ending in `# EOF`).
pub fn encode_openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    // Encoding into a String cannot fail: `fmt::Write for String` never errors, and
    // prometheus-client only errors when the writer does.
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("encoding metrics into a String cannot fail");
    out
}

/// The standard process metrics of the Prometheus client libraries
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read from `/proc/self` at
/// each scrape.
///
/// Written here because prometheus-client ships no process collector; the `procfs` crate does
/// the parsing.
#[derive(Debug)]
pub struct ProcessCollector {
    ticks_per_second: u64,
    page_size: u64,
    boot_time_seconds: u64,
}

impl ProcessCollector {
    /// Reads the constants (clock ticks, page size, boot time) once.
    pub fn new() -> Self {
        Self {
            ticks_per_second: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
            boot_time_seconds: procfs::boot_time_secs().unwrap_or(0),
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let cpu = (stat.utime + stat.stime) as f64 / self.ticks_per_second as f64;
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?;
            counter.encode(metric)?;

            let rss = ConstGauge::new((stat.rss * self.page_size) as i64);
            let metric = encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(&Unit::Bytes),
                rss.metric_type(),
            )?;
            rss.encode(metric)?;

            let vsize = ConstGauge::new(stat.vsize as i64);
            let metric = encoder.encode_descriptor(
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(&Unit::Bytes),
                vsize.metric_type(),
            )?;
            vsize.encode(metric)?;

            let start = self.boot_time_seconds as f64
                + stat.starttime as f64 / self.ticks_per_second as f64;
            let start = ConstGauge::new(start);
            let metric = encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(&Unit::Seconds),
                start.metric_type(),
            )?;
            start.encode(metric)?;
        }
        if let Ok(fds) = me.fd_count() {
            let open = ConstGauge::new(fds as i64);
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                open.metric_type(),
            )?;
            open.encode(metric)?;
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                let max = ConstGauge::new(max as i64);
                let metric = encoder.encode_descriptor(
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    None,
                    max.metric_type(),
                )?;
                max.encode(metric)?;
            }
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch, as Prometheus timestamps and `*_timestamp_seconds` gauges use.
#[allow(clippy::disallowed_methods)] // The crate's one wall-clock read (clippy.toml).
pub fn unix_now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Rewrites an OpenMetrics text document, as prometheus-client writes it, into the Prometheus text
/// format 0.0.4.
///
/// - A counter family `foo` gets its HELP and TYPE lines renamed to its sample name `foo_total`;
///   its `foo_created` samples are dropped (0.0.4 has no created timestamps).
/// - `info` families become gauges named `foo_info`; `stateset` becomes `gauge`; `unknown` becomes
///   `untyped`.
/// - `# UNIT` and `# EOF` lines are dropped; exemplars (` # {...}` after a sample) are cut off.
/// - HELP text loses OpenMetrics' `\"` escape, which 0.0.4 does not have.
///
/// prometheus-client writes no timestamps, so sample lines need no other change.
/// Written here because prometheus-client only writes OpenMetrics.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The HELP line of the family being read, held until its TYPE line says how to rename it.
    let mut pending_help: Option<(String, String)> = None;
    // The name of the counter family being read, whose `_created` samples are dropped.
    let mut counter_family: Option<String> = None;

    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name.to_owned(), help.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "stateset" => (family.to_owned(), "gauge"),
                "unknown" => (family.to_owned(), "untyped"),
                other => (family.to_owned(), other),
            };
            counter_family = (kind == "counter").then(|| family.to_owned());
            if let Some((help_family, help)) = pending_help.take() {
                if help_family == family {
                    out.push_str(&format!("# HELP {name} {help}\n"));
                }
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if let Some(family) = &counter_family {
            let sample_name = line.split(['{', ' ']).next().unwrap_or("");
            if sample_name.strip_suffix("_created") == Some(family.as_str()) {
                continue;
            }
        }
        let sample = match line.find(" # {") {
            Some(exemplar) => &line[..exemplar],
            None => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_are_rewritten() {
        let om = "# HELP a_seconds Time \\\"spent\\\".\n\
                  # TYPE a_seconds counter\n\
                  # UNIT a_seconds seconds\n\
                  a_seconds_total 1.5 # {trace=\"x\"} 1.0\n\
                  a_seconds_created 123.0\n\
                  # HELP g Now.\n\
                  # TYPE g gauge\n\
                  g{x=\"1\"} 2\n\
                  # HELP h Sizes.\n\
                  # TYPE h histogram\n\
                  h_bucket{le=\"+Inf\"} 1\n\
                  h_sum 3.0\n\
                  h_count 1\n\
                  # HELP b Build.\n\
                  # TYPE b info\n\
                  b_info{v=\"1\"} 1\n\
                  # EOF\n";
        let expected = "# HELP a_seconds_total Time \"spent\".\n\
                        # TYPE a_seconds_total counter\n\
                        a_seconds_total 1.5\n\
                        # HELP g Now.\n\
                        # TYPE g gauge\n\
                        g{x=\"1\"} 2\n\
                        # HELP h Sizes.\n\
                        # TYPE h histogram\n\
                        h_bucket{le=\"+Inf\"} 1\n\
                        h_sum 3.0\n\
                        h_count 1\n\
                        # HELP b_info Build.\n\
                        # TYPE b_info gauge\n\
                        b_info{v=\"1\"} 1\n";
        assert_eq!(openmetrics_to_text(om), expected);
    }

    #[test]
    fn process_metrics_are_encoded() {
        let registry = new_registry();
        let text = encode(&registry);
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_start_time_seconds "), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(encode_openmetrics(&registry).trim_end().ends_with("# EOF"));
    }
}
