//! Prometheus metrics of a coordinator: a few counters of our own plus Raft's gauges,
//! rendered in the text exposition format at `/metrics`.

use std::fmt::Write;

pub use idunno_server::Counter;

/// The coordinator's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub http_requests: Counter,
    pub http_client_errors: Counter,
    pub http_server_errors: Counter,
    pub forwarded: Counter,
    pub leases_granted: Counter,
    pub batches_completed: Counter,
    pub leases_expired: Counter,
    pub online_requests: Counter,
    pub online_images: Counter,
    pub online_batches: Counter,
}

impl Metrics {
    /// Renders every metric; `gauges` are (name, help, value) read at scrape time.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let counters = [
            (
                "idunno_http_requests_total",
                "HTTP requests served",
                &self.http_requests,
            ),
            (
                "idunno_http_client_errors_total",
                "HTTP 4xx answers",
                &self.http_client_errors,
            ),
            (
                "idunno_http_server_errors_total",
                "HTTP 5xx answers",
                &self.http_server_errors,
            ),
            (
                "idunno_forwarded_total",
                "requests forwarded to the leader",
                &self.forwarded,
            ),
            (
                "idunno_leases_granted_total",
                "batches leased by this leader",
                &self.leases_granted,
            ),
            (
                "idunno_batches_completed_total",
                "completions accepted by this leader",
                &self.batches_completed,
            ),
            (
                "idunno_leases_expired_total",
                "leases expired by this leader",
                &self.leases_expired,
            ),
            (
                "idunno_online_requests_total",
                "online inference requests answered with outputs by this node",
                &self.online_requests,
            ),
            (
                "idunno_online_images_total",
                "images of those requests",
                &self.online_images,
            ),
            (
                "idunno_online_batches_total",
                "online batches handed to workers by this leader",
                &self.online_batches,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
