//! Inference job bodies: a job runs one model over a list of SDFS inputs in batches.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// A job's inputs: an explicit list of SDFS names, or every file under a prefix (resolved once,
/// when the job is created, in name order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Inputs {
    List(Vec<String>),
    Prefix { prefix: String },
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// A label for humans; defaults to `job-<id>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Registry name of the model to run.
    pub model: String,
    pub inputs: Inputs,
    /// Queries per batch (≥ 1).
    pub batch_size: u32,
    /// Fair-share weight (≥ 1): a job of weight 2 gets twice the query rate of a job of weight 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Start running at once instead of waiting for `POST /v1/jobs/{id}/start`.
    #[serde(default)]
    pub start: bool,
}

fn default_weight() -> u32 {
    1
}

/// `PATCH /v1/jobs/{id}`: change how the rest of a job runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobPatch {
    #[serde(default)]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub weight: Option<u32>,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Registered, not started: no batch is handed out.
    Created,
    /// Batches are handed out to workers.
    Running,
    /// Stopped by a user: nothing new is handed out, batches workers hold but have not
    /// started go back to the queue, and batches being computed finish and count.
    /// `start` resumes it.
    Stopped,
    /// Every query has a result.
    Done,
}

/// A job as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub name: String,
    pub model: String,
    pub batch_size: u32,
    pub weight: u32,
    pub state: JobState,
    /// Number of inputs (queries) in the job.
    pub queries: u64,
    /// Queries with a result (including error results).
    pub done: u64,
    /// Queries whose result is an error (e.g. an undecodable image).
    pub failed: u64,
    /// Queries currently leased to workers.
    pub in_flight: u64,
    pub batches_done: u64,
    /// Leases that expired or were given back and whose batch was handed out again.
    pub retries: u64,
    pub created_at_ms: Millis,
    #[serde(default)]
    pub started_at_ms: Option<Millis>,
    #[serde(default)]
    pub finished_at_ms: Option<Millis>,
    /// When the job was last started or resumed (`POST /v1/jobs/{id}/start` after a stop).
    #[serde(default)]
    pub resumed_at_ms: Option<Millis>,
    /// Sum of worker compute time over done batches, in milliseconds.
    pub compute_ms: u64,
    /// Queries completed in the last 10 s ÷ min(10 s, time since the job was last started).
    /// For a done job the window ends when it finished. Derived from replicated batch
    /// records, so every coordinator answers the same.
    #[serde(default)]
    pub rate_qps: f64,
}

/// `GET /v1/jobs/{id}/stats`: the original system's job statistics (C1, C2, C5) in one body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStats {
    pub id: u64,
    pub state: JobState,
    pub queries: u64,
    pub done: u64,
    pub failed: u64,
    pub in_flight: u64,
    /// C1: as [`Job::rate_qps`].
    pub rate_qps: f64,
    /// C2: per query, from its batch's lease to the batch's completion.
    pub latency_ms: Distribution,
    /// C2: per query, the worker's compute time of its batch ÷ the batch's length.
    pub compute_ms: Distribution,
    /// C5: every worker that holds a lease of this job now or completed some of it.
    pub workers: Vec<JobWorker>,
    /// This job's fraction of all workers' busy time (compute of completed batches) over the
    /// same window as `rate_qps`; 0 when no worker was busy.
    pub share: f64,
    /// The share of worker time fair-time scheduling gives this job among the running jobs:
    /// weight × cost per query, normalised (0 when the job is not running).
    pub fair_share: f64,
    /// The scheduler's estimate of this job's model cost: worker milliseconds per query
    /// (moving average of completions, seeded from the architecture's FLOPs).
    pub cost_ms_per_query: f64,
    /// Seconds until every query is done at the current rate; absent when the rate is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
}

/// A distribution of per-query times in milliseconds: mean and (population) standard
/// deviation exact; percentiles from a DDSketch, each the sample at rank ⌊q·(n−1)⌋ within 1 %
/// relative error (so with few samples p99 is below the maximum). All 0 when `count` is 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Queries measured.
    pub count: u64,
    pub mean: f64,
    pub std: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

/// One worker's part in a job (C5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWorker {
    pub id: String,
    /// Its human label (empty if the worker never registered under this id).
    pub name: String,
    /// It holds a lease of this job now.
    pub current: bool,
    pub batches_in_flight: u64,
    /// Queries of this job whose completion it reported (the one that counted).
    pub queries_done: u64,
}

/// One batch of a job and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchInfo {
    /// `"<job>-<seq>"`.
    pub id: String,
    /// Index of the first input in the job's input list.
    pub start: u64,
    /// Number of inputs.
    pub len: u32,
    /// Images per forward pass: the job's batch size when the batch was cut. A batch holds
    /// one or more passes (a cheap model's lease is sized to its measured cost).
    #[serde(default)]
    pub pass_size: u32,
    pub state: BatchStateInfo,
}

/// A batch's state as reported by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BatchStateInfo {
    Pending,
    Leased {
        worker: String,
        lease_id: u64,
        attempt: u32,
        deadline_ms: Millis,
        #[serde(default)]
        leased_at_ms: Millis,
    },
    Done {
        result: String,
        worker: String,
        failed: u32,
        compute_ms: u64,
        /// When the lease whose completion counted was granted (0 if not recorded).
        #[serde(default)]
        leased_at_ms: Millis,
        #[serde(default)]
        completed_at_ms: Millis,
    },
}
