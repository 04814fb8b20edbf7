//! Prometheus metrics of a storage node (`prometheus-client`), served at `/metrics`: what it
//! holds, the bytes that moved in and out, what it found corrupt, and its HTTP requests with
//! their latency by method (a `PUT` of a blob is a put, a `GET` a read).

use idunno_server::metrics::{register, Counter, Gauge, HttpMetrics, Registry};

use crate::blob_store::{StoreStats, Totals};

/// Every metric of a storage node, registered once in `registry`.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub http: HttpMetrics,
    /// Blobs copied in from other nodes (re-replication).
    pub fetches: Counter,
    /// Successful heartbeats to the coordinators.
    pub heartbeats: Counter,
    /// Whether the last heartbeat reached a coordinator (what `/readyz` answers).
    pub coordinators_reachable: Gauge,
    blobs: Gauge,
    bytes: Gauge,
    bytes_written: Counter,
    bytes_read: Counter,
    corrupt_chunks: Counter,
    blobs_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let http = HttpMetrics::register(&mut r);
        Metrics {
            http,
            fetches: register(
                &mut r,
                "idunno_sdfs_fetches",
                "blobs copied from other nodes",
                Counter::default(),
            ),
            heartbeats: register(
                &mut r,
                "idunno_sdfs_heartbeats",
                "heartbeats the coordinators accepted",
                Counter::default(),
            ),
            coordinators_reachable: register(
                &mut r,
                "idunno_sdfs_coordinators_reachable",
                "1 if the last heartbeat reached a coordinator",
                Gauge::default(),
            ),
            blobs: register(
                &mut r,
                "idunno_sdfs_blobs",
                "blobs stored on this node",
                Gauge::default(),
            ),
            bytes: register(
                &mut r,
                "idunno_sdfs_bytes",
                "content bytes stored on this node",
                Gauge::default(),
            ),
            bytes_written: register(
                &mut r,
                "idunno_sdfs_bytes_written",
                "content bytes of newly stored blobs (bytes in)",
                Counter::default(),
            ),
            bytes_read: register(
                &mut r,
                "idunno_sdfs_bytes_read",
                "verified content bytes served (bytes out)",
                Counter::default(),
            ),
            corrupt_chunks: register(
                &mut r,
                "idunno_sdfs_corrupt_chunks",
                "chunks that failed their checksum",
                Counter::default(),
            ),
            blobs_dropped: register(
                &mut r,
                "idunno_sdfs_blobs_dropped",
                "blobs dropped as corrupt (reported lost)",
                Counter::default(),
            ),
            registry: r,
        }
    }
}

impl Metrics {
    /// Brings the store's totals and counters into the metrics, before a scrape.
    pub fn update(&self, totals: Totals, stats: StoreStats) {
        self.blobs.set(totals.blobs as i64);
        self.bytes.set(totals.bytes as i64);
        for (counter, value) in [
            (&self.bytes_written, stats.bytes_written),
            (&self.bytes_read, stats.bytes_read),
            (&self.corrupt_chunks, stats.corrupt_chunks),
            (&self.blobs_dropped, stats.blobs_dropped),
        ] {
            counter.inc_by(value.saturating_sub(counter.get()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_s_figures_become_metrics() {
        let m = Metrics::default();
        let stats = |corrupt| StoreStats {
            corrupt_chunks: corrupt,
            bytes_written: 100,
            ..StoreStats::default()
        };
        m.update(
            Totals {
                blobs: 2,
                bytes: 10,
            },
            stats(1),
        );
        m.update(
            Totals {
                blobs: 2,
                bytes: 10,
            },
            stats(3),
        );
        let mut text = String::new();
        idunno_server::metrics::encode(&mut text, &m.registry).unwrap();
        assert!(text.contains("idunno_sdfs_blobs 2\n"), "{text}");
        assert!(
            text.contains("idunno_sdfs_corrupt_chunks_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("idunno_sdfs_bytes_written_total 100\n"),
            "{text}"
        );
    }
}
