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
    /// Stopped by a user: nothing new is handed out; batches in flight may still complete.
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
    /// Sum of worker compute time over done batches, in milliseconds.
    pub compute_ms: u64,
    /// Completed queries per second over the last 10 s (leader soft state; 0 on a stale read).
    #[serde(default)]
    pub rate_qps: f64,
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
    },
    Done {
        result: String,
        worker: String,
        failed: u32,
        compute_ms: u64,
    },
}
