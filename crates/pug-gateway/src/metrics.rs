//! The gateway's metrics, registered on the registry `pug serve` serves at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the per-tenant request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The tenant id, or `unknown` for a tenant that does not exist (never the raw input, so
    /// that made-up names cannot grow the series count).
    pub tenant: String,
    /// `1xx` … `5xx`.
    pub code_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// `success`, `failure`, `throttled`, `embed_success` or `embed_failure`.
    pub result: &'static str,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Handles to the gateway's metric families. Cheap to clone.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily,
    pub in_flight: Gauge,
    pub connect_errors: Family<TenantLabels, Counter>,
    pub logins: Family<LoginLabels, Counter>,
    /// Reads of every embed key from the store (periodic, and for unknown key ids).
    pub embed_key_reads: Counter,
    /// Rows the session sweep deleted (sessions and remembered token ids).
    pub swept: Counter,
    /// Wakes of sleeping tenants this gateway asked for (one per wake, however many requests).
    pub wakes_asked: Counter,
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl GatewayMetrics {
    /// Creates the families and registers them on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Gauge::default(),
            connect_errors: Family::default(),
            logins: Family::default(),
            embed_key_reads: Counter::default(),
            swept: Counter::default(),
            wakes_asked: Counter::default(),
        };
        registry.register(
            "pug_gateway_requests",
            "Requests the gateway answered for a tenant, by status class",
            m.requests.clone(),
        );
        registry.register(
            "pug_gateway_request_duration_seconds",
            "Time from a tenant request's arrival to the end of its response body",
            m.duration.clone(),
        );
        registry.register(
            "pug_gateway_requests_in_flight",
            "Tenant requests the gateway is answering now",
            m.in_flight.clone(),
        );
        registry.register(
            "pug_gateway_upstream_connect_errors",
            "Connections to a tenant's Grafana replica that could not be made",
            m.connect_errors.clone(),
        );
        registry.register(
            "pug_gateway_logins",
            "Sign-in attempts at the gateway, by result",
            m.logins.clone(),
        );
        registry.register(
            "pug_gateway_embed_key_reads",
            "Reads (and decryptions) of every embed key from the store: the periodic refresh, and at most one per interval for tokens whose key id is unknown",
            m.embed_key_reads.clone(),
        );
        registry.register(
            "pug_gateway_swept_rows",
            "Expired or orphaned sessions and expired embed token ids the session sweep deleted",
            m.swept.clone(),
        );
        registry.register(
            "pug_gateway_wakes_asked",
            "Wakes of sleeping tenants the gateway asked for, one per wake however many requests waited for it",
            m.wakes_asked.clone(),
        );
        m
    }

    /// Counts one login attempt.
    pub fn login(&self, result: &'static str) {
        self.logins.get_or_create(&LoginLabels { result }).inc();
    }
}

/// A tenant's counter and histogram for one status class, looked up once and kept with the
/// tenant's route (so that a request does not hash labels).
pub type Handles = (Counter, Histogram);

impl GatewayMetrics {
    /// The counter and histogram of `tenant` for status class index `class` (see
    /// [`class_index`]).
    pub fn handles(&self, tenant: &str, class: usize) -> Handles {
        let labels = RequestLabels {
            tenant: tenant.to_owned(),
            code_class: CLASSES[class].to_owned(),
        };
        (
            self.requests.get_or_create(&labels).clone(),
            self.duration.get_or_create(&labels).clone(),
        )
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// 0 for 1xx … 4 for 5xx (and anything else).
pub fn class_index(status: u16) -> usize {
    match status / 100 {
        1..=4 => (status / 100 - 1) as usize,
        _ => 4,
    }
}
