//! What a worker writes to SDFS for one batch (`results/<job>/<batch>.json`), and what
//! `GET /v1/jobs/{id}/results` returns: one [`QueryResult`] per input, in input order.

use serde::{Deserialize, Serialize};

/// One class of a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Class {
    /// ImageNet-1k class index.
    pub index: usize,
    pub label: String,
    /// Softmax probability.
    pub probability: f32,
}

/// The result of one query (one input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    /// Position in the job's input list.
    pub index: u64,
    /// SDFS name of the input.
    pub input: String,
    /// Top classes, most probable first; empty on error.
    #[serde(default)]
    pub top: Vec<Class>,
    /// Why there is no prediction (unreadable or undecodable input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The results object of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    pub job_id: u64,
    pub batch_id: String,
    pub model: String,
    pub worker: String,
    /// Time of the batched forward pass and preprocessing, in milliseconds.
    pub compute_ms: u64,
    pub results: Vec<QueryResult>,
}

/// SDFS name of a batch's results object.
pub fn result_path(job_id: u64, batch_id: &str) -> String {
    format!("{}{batch_id}.json", job_results_prefix(job_id))
}

/// The SDFS folder of a job's results (deleted with the job).
pub fn job_results_prefix(job_id: u64) -> String {
    format!("results/{job_id}/")
}
