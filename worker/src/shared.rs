//! What the worker's tasks share: its configuration and clients, the model cache, the compute
//! pool, the prepared-batch queue, the leases it holds, its counters and its stop signal.
//! [`crate::runtime`] builds it once at start-up; every task holds an `Arc` of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idunno_api::Client;
use tokio::sync::watch;

use crate::config::WorkerConfig;
use crate::inputs::InputFetcher;
use crate::lanes::Lanes;
use crate::metrics::Metrics;
use crate::model_cache::ModelCache;
use crate::pool::ComputePool;
use crate::queue::{Holding, PreparedQueue};

/// Everything the worker's tasks share.
pub(crate) struct Shared {
    pub config: WorkerConfig,
    /// The coordinators (retries, sticky leader, bearer token).
    pub client: Client,
    /// Assigned by the coordinator at registration.
    pub worker_id: String,
    pub inputs: InputFetcher,
    pub models: ModelCache,
    pub pool: ComputePool,
    /// How many batches run at once, and each one's share of the worker's time.
    pub lanes: Lanes,
    /// Batches prepared and not started.
    pub queue: PreparedQueue,
    /// Every lease held now (heartbeats list them).
    pub holding: Holding,
    pub stats: Stats,
    /// Becomes `true` when the worker stops taking work.
    pub stop: watch::Receiver<bool>,
    /// How often to heartbeat (from the registration answer).
    pub heartbeat_interval: Duration,
    pub metrics: Metrics,
}

/// Counters of what the worker did, for tests and logs.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    heartbeats: AtomicU64,
    leases: AtomicU64,
    released: AtomicU64,
    batches: AtomicU64,
    rejected: AtomicU64,
    queries: AtomicU64,
    failed_queries: AtomicU64,
}

impl Stats {
    pub fn record_heartbeat(&self) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_lease(&self) {
        self.leases.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_release(&self) {
        self.released.fetch_add(1, Ordering::Relaxed);
    }
    pub fn record_completion(&self, queries: u64, failed: u64, accepted: bool) {
        if accepted {
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.queries.fetch_add(queries, Ordering::Relaxed);
            self.failed_queries.fetch_add(failed, Ordering::Relaxed);
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub(crate) fn snapshot(&self) -> WorkerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerStats {
            heartbeats: get(&self.heartbeats),
            leases: get(&self.leases),
            released: get(&self.released),
            batches: get(&self.batches),
            rejected: get(&self.rejected),
            queries: get(&self.queries),
            failed_queries: get(&self.failed_queries),
        }
    }
}

/// What a worker has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Heartbeats the coordinators answered.
    pub heartbeats: u64,
    /// Leases received.
    pub leases: u64,
    /// Leases given back unstarted.
    pub released: u64,
    /// Batches whose completion was accepted.
    pub batches: u64,
    /// Completions acknowledged but not counted (the batch was already done).
    pub rejected: u64,
    /// Queries in accepted batches, and how many of them have an error result.
    pub queries: u64,
    pub failed_queries: u64,
}
