//! Worker protocol bodies: register, heartbeat, lease a batch, complete it.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// `POST /v1/workers/register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRegistration {
    /// A human label (host name); ids are assigned by the coordinator.
    #[serde(default)]
    pub name: String,
    /// Batches the worker computes at once.
    #[serde(default = "one")]
    pub capacity: u32,
    /// Registry names of the models this worker will run; `None` = any model (loaded on demand).
    #[serde(default)]
    pub accepts: Option<Vec<String>>,
    /// Models it has loaded now.
    #[serde(default)]
    pub loaded: Vec<String>,
}

fn one() -> u32 {
    1
}

impl Default for WorkerRegistration {
    /// No name, capacity 1, any model, nothing loaded.
    fn default() -> Self {
        WorkerRegistration {
            name: String::new(),
            capacity: 1,
            accepts: None,
            loaded: Vec::new(),
        }
    }
}

/// The answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRegistered {
    pub worker_id: String,
    /// How often the coordinator expects a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is dead and its leases go back to the queue.
    pub lease_timeout_ms: u64,
}

/// `POST /v1/workers/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Models loaded now (the previous list is replaced).
    #[serde(default)]
    pub loaded: Vec<String>,
    #[serde(default = "one")]
    pub capacity: u32,
    /// The worker's name and the models it runs (`None` = any), as at registration: a
    /// leader that took over after the registration learns them from here.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub accepts: Option<Vec<String>>,
    /// Every lease the worker holds now (received and not yet completed or given back).
    /// A lease of this worker that the leader granted a while ago but that is missing here
    /// was never received (its answer was lost) and goes back to the queue. `None`: not
    /// reported (nothing is reclaimed).
    #[serde(default)]
    pub holding: Option<Vec<u64>>,
}

impl Default for Heartbeat {
    /// Nothing loaded, capacity 1, no name, any model, holdings not reported.
    fn default() -> Self {
        Heartbeat {
            loaded: Vec::new(),
            capacity: 1,
            name: String::new(),
            accepts: None,
            holding: None,
        }
    }
}

/// What a heartbeat answer tells the worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Models the cluster asked every worker to load (`POST /v1/models/{name}/load`).
    #[serde(default)]
    pub load: Vec<String>,
}

/// `POST /v1/workers/{id}/lease`: ask for a batch, waiting up to `wait_ms` for one.
///
/// A worker keeps one of these outstanding at all times. With `prepared` empty it asks for
/// its next batch. With the leases it holds but has not started in `prepared`, it asks
/// whether any of them should be given back (its job was stopped, its batch size changed,
/// or a job with nothing running should take its place): the answer then names them in
/// [`LeaseAnswer::revoked`], possibly with a lease of the job that takes the place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    #[serde(default)]
    pub wait_ms: u64,
    #[serde(default)]
    pub prepared: Vec<LeaseRef>,
}

/// One lease, by batch and lease id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRef {
    pub batch_id: String,
    pub lease_id: u64,
}

/// The answer to a lease call (204 when nothing came up within the wait).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAnswer {
    /// A new batch for the worker.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Leases of `prepared` the worker should give back (`POST …/release`) unless it has
    /// started them already, or drop when they are no longer current.
    #[serde(default)]
    pub revoked: Vec<LeaseRef>,
    /// A batch of online inference requests, to run before anything prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<crate::online::OnlineLease>,
}

/// One input of a leased batch, with where its bytes are so the worker reads them straight
/// from a storage node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasedInput {
    /// Position in the job's input list.
    pub index: u64,
    /// SDFS name.
    pub name: String,
    /// BLAKE3 (hex) of its newest version; `None` if no such file exists (an error result).
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(default)]
    pub size: u64,
    /// Addresses of live storage nodes holding it, best first.
    #[serde(default)]
    pub replicas: Vec<String>,
}

/// A batch handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: u64,
    /// `"<job>-<seq>"`.
    pub batch_id: String,
    pub job_id: u64,
    /// Registry name of the model, its architecture and weights location.
    pub model: String,
    pub arch: crate::arch::Arch,
    pub weights: String,
    pub input_size: u32,
    pub inputs: Vec<LeasedInput>,
    /// 1 for the first hand-out of this batch.
    pub attempt: u32,
    pub deadline_ms: Millis,
    /// The declared CPU time per query of a `synthetic` model (0 for real architectures).
    #[serde(default)]
    pub cost_ms: u32,
    /// Images per forward pass: the job's batch size when the batch was cut (a batch cut
    /// before the batch size shrank is given back and cut again). A batch may hold several
    /// passes' inputs (a cheap model's lease is sized to be worth its fixed cost); the worker
    /// runs them `batch_size` at a time. 0 (a coordinator from before) means all inputs in
    /// one pass.
    #[serde(default)]
    pub batch_size: u32,
}

/// `POST /v1/batches/{id}/complete`: the batch's results, in one of two forms.
///
/// * `results`: the results object itself. The coordinator stores it in SDFS as
///   `results/<job>/<batch>.json` and commits that file version together with the
///   completion, as one Raft entry: the object exists if and only if the completion counted,
///   and a completion that does not count (the batch is done already) stores nothing. It
///   must name the batch and hold one result per query, in input order (else 400). The
///   failed-query count and the compute time are read from the object. This is what workers
///   send: one request and one commit per batch instead of a put and a completion.
/// * `result`: the SDFS name of a results object already written, with `failed` and
///   `compute_ms` stated alongside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub lease_id: u64,
    /// The results object, stored by the coordinator with the completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<crate::result::BatchResult>,
    /// Or where the batch's results already are (an SDFS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Queries of the batch whose result is an error (with `result`; `results` carries them).
    #[serde(default)]
    pub failed: u32,
    /// Worker time spent on the batch (with `result`; `results` carries it).
    #[serde(default)]
    pub compute_ms: u64,
}

/// The answer to a completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionAck {
    /// True if this completion is the one that counts; false if the batch was already done
    /// (the report is acknowledged and dropped).
    pub accepted: bool,
}

/// `POST /v1/workers/{id}/release`: give back a lease that was not started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub lease_id: u64,
    pub batch_id: String,
}

/// A worker as the coordinator (leader) sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub name: String,
    pub capacity: u32,
    /// Models it will run (`None` = any).
    pub accepts: Option<Vec<String>>,
    /// Models it has loaded.
    pub loaded: Vec<String>,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms_ago: u64,
}
