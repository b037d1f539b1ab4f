//! Prometheus metrics at `{admin}/metrics`, in the OpenMetrics text format.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use truelayer_auth::TokenCache;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status: &'static str,
}

/// The proxy's metrics. Cheap to update from the request path (atomics).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    /// Each (method, status class) series, resolved once: no label hashing per request.
    request_series: [[OnceLock<Counter>; STATUS_CLASSES.len()]; METHODS.len()],
    upstream_seconds: Histogram,
    replays: Counter,
    resends: Counter,
    signing_failures: Counter,
    refused: Counter,
    token_fetches: Counter,
    token_fetch_failures: Counter,
    token_age: Gauge<f64, AtomicU64>,
    token_remaining: Gauge<f64, AtomicU64>,
    token_usable: Gauge,
    /// What the token counters showed at the last scrape (they are fed by difference).
    seen: Mutex<(u64, u64)>,
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("tlauth_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by method and status class",
            requests.clone(),
        );
        // 0.5 ms to about 16 s.
        let upstream_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "upstream_duration_seconds",
            "Time from forwarding a request to the upstream's response head (replays included)",
            upstream_seconds.clone(),
        );
        let replays = Counter::default();
        registry.register(
            "replays",
            "Requests sent again after the upstream answered 401",
            replays.clone(),
        );
        let resends = Counter::default();
        registry.register(
            "upstream_resends",
            "Requests sent again on a fresh connection because the upstream closed the pooled one under them",
            resends.clone(),
        );
        let signing_failures = Counter::default();
        registry.register(
            "signing_failures",
            "Requests not sent because they could not be signed",
            signing_failures.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "refused",
            "Requests refused before forwarding (a foreign Host or a cross-site browser)",
            refused.clone(),
        );
        let token_fetches = Counter::default();
        registry.register(
            "token_fetches",
            "Access token requests the token cache made",
            token_fetches.clone(),
        );
        let token_fetch_failures = Counter::default();
        registry.register(
            "token_fetch_failures",
            "Access token requests that failed",
            token_fetch_failures.clone(),
        );
        let token_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "token_age_seconds",
            "Age of the access token handed out (0 when none is usable)",
            token_age.clone(),
        );
        let token_remaining = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "token_remaining_seconds",
            "Lifetime left of the access token handed out (0 when none is usable)",
            token_remaining.clone(),
        );
        let token_usable = Gauge::default();
        registry.register(
            "token_usable",
            "1 when a usable access token is held (the proxy is ready), else 0",
            token_usable.clone(),
        );
        Arc::new(Metrics {
            registry: Mutex::new(registry),
            requests,
            request_series: Default::default(),
            upstream_seconds,
            replays,
            resends,
            signing_failures,
            refused,
            token_fetches,
            token_fetch_failures,
            token_age,
            token_remaining,
            token_usable,
            seen: Mutex::new((0, 0)),
        })
    }

    pub(crate) fn answered(&self, method: &Method, status: StatusCode) {
        let (m, c) = (method_index(method), status_index(status));
        self.request_series[m][c]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        method: METHODS[m],
                        status: STATUS_CLASSES[c],
                    })
                    .clone()
            })
            .inc();
    }

    pub(crate) fn upstream(&self, took: Duration) {
        self.upstream_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn replayed(&self) {
        self.replays.inc();
    }

    pub(crate) fn resent(&self) {
        self.resends.inc();
    }

    pub(crate) fn signing_failed(&self) {
        self.signing_failures.inc();
    }

    pub(crate) fn refused(&self) {
        self.refused.inc();
    }

    /// The text exposition, with the token figures read from the cache now.
    pub(crate) fn render(&self, tokens: &TokenCache) -> String {
        let stats = tokens.stats();
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.token_fetches
                .inc_by(stats.fetches.saturating_sub(seen.0));
            self.token_fetch_failures
                .inc_by(stats.fetch_failures.saturating_sub(seen.1));
            *seen = (seen.0.max(stats.fetches), seen.1.max(stats.fetch_failures));
        }
        self.token_age
            .set(stats.token_age.map_or(0.0, |d| d.as_secs_f64()));
        self.token_remaining
            .set(stats.token_remaining.map_or(0.0, |d| d.as_secs_f64()));
        self.token_usable
            .set(i64::from(stats.token_remaining.is_some()));
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn status_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}
