//! Prometheus metrics of a coordinator (`prometheus-client`): what it counts as requests come
//! and go (HTTP, leases, completions, online inference, Raft writes) and what it reads off its
//! state at scrape time (Raft's term and indexes, each job's queue and rate, online queues,
//! live workers). Served at `/metrics` by `api/health.rs`.

use std::time::Duration;

use idunno_server::metrics::{
    batch_sizes, register, seconds, Counter, EncodeLabelSet, Family, FloatGauge, Gauge, Histogram,
    HistogramFamily, HttpMetrics, Registry,
};

/// A model's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

/// A job and its model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: String,
    pub model: String,
}

/// Every metric of a coordinator, registered once in `registry`.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub http: HttpMetrics,
    pub forwarded: Counter,
    pub leases_granted: Counter,
    pub batches_completed: Counter,
    pub leases_expired: Counter,
    /// From a lease call's arrival to the lease it gets.
    pub lease_wait: Histogram,
    /// From a client write's proposal to its application on this node (the leader's append,
    /// replication to a quorum, commit and apply).
    pub raft_write: Histogram,
    /// Writing entries to this node's log (sled, flushed), per append.
    pub raft_append: Histogram,
    /// Applying committed entries to the state machine (and writing what changed), per call.
    pub raft_apply: Histogram,
    /// Worker milliseconds per query of completed batches, per model (seconds).
    pub query_seconds: HistogramFamily<ModelLabel>,
    pub online_requests: Family<ModelLabel, Counter>,
    pub online_images: Family<ModelLabel, Counter>,
    pub online_batch_size: HistogramFamily<ModelLabel>,
    /// From a request's arrival to its batch being handed to a worker.
    pub online_queue_delay: HistogramFamily<ModelLabel>,
    /// From a request's arrival to its answer.
    pub online_latency: HistogramFamily<ModelLabel>,
    // Read off the state at scrape time.
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_committed_index: Gauge,
    pub raft_applied_index: Gauge,
    pub job_queries_left: Family<JobLabels, Gauge>,
    pub job_in_flight: Family<JobLabels, Gauge>,
    pub job_rate: Family<JobLabels, FloatGauge>,
    pub online_queued: Family<ModelLabel, Gauge>,
    pub workers_alive: Gauge,
    pub replicas_missing: Gauge,
    pub repair_queue: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let http = HttpMetrics::register(&mut r);
        Metrics {
            http,
            forwarded: register(&mut r, "idunno_forwarded", "requests forwarded to the leader", Counter::default()),
            leases_granted: register(&mut r, "idunno_leases_granted", "batches leased by this leader", Counter::default()),
            batches_completed: register(&mut r, "idunno_batches_completed", "completions accepted by this leader", Counter::default()),
            leases_expired: register(&mut r, "idunno_leases_expired", "leases expired by this leader", Counter::default()),
            lease_wait: register(&mut r, "idunno_lease_wait_seconds", "from a worker's lease call to the lease it gets", seconds()),
            raft_write: register(&mut r, "idunno_raft_write_seconds", "from a write's proposal to its application here (append, replicate, commit, apply)", seconds()),
            raft_append: register(&mut r, "idunno_raft_append_seconds", "writing entries to this node's Raft log, flushed, per append", seconds()),
            raft_apply: register(&mut r, "idunno_raft_apply_seconds", "applying committed entries to the state machine, per call", seconds()),
            query_seconds: register(&mut r, "idunno_query_seconds", "worker time per query of completed batches, by model", Family::new_with_constructor(seconds)),
            online_requests: register(&mut r, "idunno_online_requests", "online inference requests answered with outputs, by model", Family::default()),
            online_images: register(&mut r, "idunno_online_images", "images of those requests, by model", Family::default()),
            online_batch_size: register(&mut r, "idunno_online_batch_size", "images per online batch handed to a worker, by model", Family::new_with_constructor(batch_sizes)),
            online_queue_delay: register(&mut r, "idunno_online_queue_delay_seconds", "from an online request's arrival to its batch being handed out, by model", Family::new_with_constructor(seconds)),
            online_latency: register(&mut r, "idunno_online_latency_seconds", "from an online request's arrival to its answer, by model", Family::new_with_constructor(seconds)),
            raft_term: register(&mut r, "idunno_raft_term", "current Raft term", Gauge::default()),
            raft_is_leader: register(&mut r, "idunno_raft_is_leader", "1 if this node leads", Gauge::default()),
            raft_last_log_index: register(&mut r, "idunno_raft_last_log_index", "last log index", Gauge::default()),
            raft_committed_index: register(&mut r, "idunno_raft_committed_index", "last committed index Raft reported to this node", Gauge::default()),
            raft_applied_index: register(&mut r, "idunno_raft_applied_index", "last applied index", Gauge::default()),
            job_queries_left: register(&mut r, "idunno_job_queries_left", "queries of a running job not done yet (its queue depth)", Family::default()),
            job_in_flight: register(&mut r, "idunno_job_in_flight", "queries of a running job leased to workers now", Family::default()),
            job_rate: register(&mut r, "idunno_job_rate_qps", "a running job's completion rate over the last 10 s", Family::default()),
            online_queued: register(&mut r, "idunno_online_queued", "online requests waiting for a worker, by model", Family::default()),
            workers_alive: register(&mut r, "idunno_workers_alive", "workers this node heard from within a lease timeout", Gauge::default()),
            replicas_missing: register(&mut r, "idunno_sdfs_replicas_missing", "copies short of each blob's replication factor (on the live storage nodes), summed", Gauge::default()),
            repair_queue: register(&mut r, "idunno_sdfs_repair_queue", "copies the leader's repair would make now", Gauge::default()),
            registry: r,
        }
    }
}

impl Metrics {
    /// One online request answered: its model, images and latency.
    pub fn online_answered(&self, model: &str, images: u64, took: Duration) {
        let label = ModelLabel {
            model: model.to_string(),
        };
        self.online_requests.get_or_create(&label).inc();
        self.online_images.get_or_create(&label).inc_by(images);
        self.online_latency
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }
}
