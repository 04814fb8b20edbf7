//! Prometheus metrics of a storage node, rendered in the text exposition format at
//! `/metrics`: what it holds, what moved through it, and what it found corrupt.

use std::fmt::Write;

use crate::blob_store::{StoreStats, Totals};

pub use idunno_server::Counter;

/// The HTTP side's counters (the store keeps its own, see [`StoreStats`]).
#[derive(Debug, Default)]
pub struct Metrics {
    pub http_requests: Counter,
    pub http_client_errors: Counter,
    pub http_server_errors: Counter,
    /// Blobs copied in from other nodes (re-replication).
    pub fetches: Counter,
    /// Successful heartbeats to the coordinators.
    pub heartbeats: Counter,
}

impl Metrics {
    /// Renders every metric with the store's current totals and counters.
    pub fn render(&self, totals: Totals, stats: StoreStats) -> String {
        let mut out = String::new();
        let gauges = [
            (
                "idunno_sdfs_blobs",
                "blobs stored on this node",
                totals.blobs,
            ),
            (
                "idunno_sdfs_bytes",
                "content bytes stored on this node",
                totals.bytes,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "idunno_sdfs_bytes_written_total",
                "content bytes of newly stored blobs",
                stats.bytes_written,
            ),
            (
                "idunno_sdfs_bytes_read_total",
                "verified content bytes served",
                stats.bytes_read,
            ),
            (
                "idunno_sdfs_corrupt_chunks_total",
                "chunks that failed their checksum",
                stats.corrupt_chunks,
            ),
            (
                "idunno_sdfs_blobs_dropped_total",
                "blobs dropped as corrupt (reported lost)",
                stats.blobs_dropped,
            ),
            (
                "idunno_sdfs_fetches_total",
                "blobs copied from other nodes",
                self.fetches.get(),
            ),
            (
                "idunno_sdfs_heartbeats_total",
                "heartbeats the coordinators accepted",
                self.heartbeats.get(),
            ),
            (
                "idunno_http_requests_total",
                "HTTP requests served",
                self.http_requests.get(),
            ),
            (
                "idunno_http_client_errors_total",
                "HTTP 4xx answers",
                self.http_client_errors.get(),
            ),
            (
                "idunno_http_server_errors_total",
                "HTTP 5xx answers",
                self.http_server_errors.get(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.http_requests.add(3);
        let text = m.render(
            Totals {
                blobs: 2,
                bytes: 10,
            },
            StoreStats {
                corrupt_chunks: 1,
                ..StoreStats::default()
            },
        );
        assert!(text.contains("# TYPE idunno_sdfs_blobs gauge\nidunno_sdfs_blobs 2\n"));
        assert!(text.contains("idunno_sdfs_corrupt_chunks_total 1\n"));
        assert!(text.contains("idunno_http_requests_total 3\n"));
    }
}
