//! Prometheus metrics through the maintained `prometheus-client` crate: each role keeps a
//! [`Registry`] of counters, gauges and histograms (with labels), and serves it at
//! `/metrics` with [`render`]. What every HTTP server counts the same way — requests and
//! their latency by method and status class — is [`HttpMetrics`].

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
pub use prometheus_client::encoding::text::encode;
pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

/// The content type of the text exposition `render` writes (OpenMetrics 1.0, which
/// Prometheus scrapes natively).
pub const CONTENT_TYPE_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A histogram family whose members are made by a plain function.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A floating-point gauge (ratios, rates).
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Buckets for durations: 0.5 ms to ~16 s, doubling.
pub fn seconds() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// Buckets for batch sizes: 1, 2, 4, … 64.
pub fn batch_sizes() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 7,
    ))
}

/// Registers `metric` under `name` with `help` and returns it: the returned handle and the
/// registry's share one value, so a role's metrics struct is built in one pass.
pub fn register<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// The registry in the text exposition format.
pub fn render(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        )
            .into_response(),
    }
}

/// An HTTP request's method and status class (`2xx`, `4xx`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub status: String,
}

/// Requests served and how long they took, by method and status class.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    seconds: HistogramFamily<HttpLabels>,
}

impl HttpMetrics {
    /// Registers `idunno_http_requests_total` and `idunno_http_request_seconds`.
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        HttpMetrics {
            requests: register(
                registry,
                "idunno_http_requests",
                "HTTP requests served, by method and status class",
                Family::default(),
            ),
            seconds: register(
                registry,
                "idunno_http_request_seconds",
                "time to answer an HTTP request (to its head; streamed bodies go on after)",
                Family::new_with_constructor(seconds),
            ),
        }
    }

    /// Counts one request.
    pub fn record(&self, method: &Method, status: StatusCode, took: Duration) {
        // Methods are the client's to choose: any outside HTTP's own counts as "other", so
        // that no client can grow the label set without bound.
        let known = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ];
        let method = if known.contains(method) {
            method.as_str()
        } else {
            "other"
        };
        let labels = HttpLabels {
            method: method.to_string(),
            status: format!("{}xx", status.as_u16() / 100),
        };
        self.requests.get_or_create(&labels).inc();
        self.seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_render_as_labelled_counters_and_histograms() {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        http.record(
            &Method::GET,
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        let odd = Method::from_bytes(b"BREW").unwrap();
        http.record(
            &odd,
            StatusCode::METHOD_NOT_ALLOWED,
            Duration::from_millis(1),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"idunno_http_requests_total{method="GET",status="4xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE idunno_http_request_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"idunno_http_requests_total{method="other",status="4xx"} 1"#),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
    }
}
