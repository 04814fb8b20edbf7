//! What goes through the Raft log: a [`Request`] (a [`Command`] stamped by the leader with a
//! request id and the time) and the [`Response`] that applying it produced.
//!
//! Commands are facts the leader decided ("lease this worker a batch of job 7"); applying one is
//! deterministic and never reads a clock: all time comes from `Request::time_ms`.

use idunno_api::file::FileVersion;
use idunno_api::job::Inputs;
use idunno_api::Millis;
use serde::{Deserialize, Serialize};

use super::files::{FreedBlob, NewVersion};
use super::jobs::BatchId;
use super::models::ModelRecord;

/// One Raft log entry's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The client's request id; a retried request with the same id is applied once. Empty for
    /// commands the leader issues itself (they are idempotent by construction).
    pub id: String,
    /// Leader wall-clock time when the command was proposed.
    pub time_ms: Millis,
    pub cmd: Command,
}

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    PutModel {
        name: String,
        arch: idunno_api::arch::Arch,
        weights: String,
        input_size: u32,
        /// Declared CPU ms per query (`synthetic` models only).
        #[serde(default)]
        cost_ms: Option<u32>,
        #[serde(default)]
        online: idunno_api::model::OnlineBatching,
    },
    DeleteModel {
        name: String,
    },
    /// Every worker should load this model now.
    LoadModel {
        name: String,
    },
    CreateJob {
        name: Option<String>,
        model: String,
        inputs: Inputs,
        batch_size: u32,
        weight: u32,
        start: bool,
    },
    UpdateJob {
        job: u64,
        batch_size: Option<u32>,
        weight: Option<u32>,
    },
    StartJob {
        job: u64,
    },
    StopJob {
        job: u64,
    },
    DeleteJob {
        job: u64,
    },
    /// Hand the next batch of `job` to `worker`.
    Lease {
        worker: String,
        job: u64,
        /// The lease's deadline is `time_ms + lease_timeout_ms`.
        lease_timeout_ms: u64,
        /// Forward passes of the job's batch size the new batch holds (the leader sizes a
        /// lease to its model's cost, see `leader::scheduler::passes_per_lease`); 0 (entries
        /// written before there was a choice) is one. A returned batch goes out as it is.
        #[serde(default, skip_serializing_if = "super::jobs::is_zero")]
        passes: u32,
    },
    /// A worker finished a batch.
    Complete {
        batch: BatchId,
        lease_id: u64,
        result: String,
        failed: u32,
        compute_ms: u64,
        /// The results object, stored already, committed as version of `result` with the
        /// completion if it counts (absent: the worker wrote `result` itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        results: Option<NewVersion>,
    },
    /// A worker gives a lease back unstarted (shutting down).
    Release {
        batch: BatchId,
        lease_id: u64,
    },
    /// The leader found these leases' holders dead or their deadlines passed.
    Expire {
        leases: Vec<(BatchId, u64)>,
    },
    /// A storage node announced itself (or its new address).
    RegisterNode {
        id: String,
        addr: String,
    },
    /// The leader saw a storage node go silent, or come back.
    SetNodeAlive {
        id: String,
        alive: bool,
    },
    /// A new version of `path`, stored as blob `hash` on `replicas` (already flushed there).
    PutVersion {
        path: String,
        hash: String,
        size: u64,
        replicas: Vec<String>,
        /// Replication factor wanted for the blob.
        target: u32,
        /// Versions kept per name.
        keep: u32,
    },
    DeleteFile {
        path: String,
    },
    /// Copies of `hash` now exist on `nodes` (late put replicas, repairs, nodes back).
    AddReplicas {
        hash: String,
        nodes: Vec<String>,
    },
    /// `nodes` no longer hold `hash` (lost, corrupt, trimmed).
    DropReplicas {
        hash: String,
        nodes: Vec<String>,
    },
    /// A worker registered (or a leader heard from one it had no record of).
    RegisterWorker {
        id: String,
        name: String,
    },
    /// A worker deregistered, or was silent for so long that the leader forgot it.
    DeregisterWorker {
        id: String,
    },
}

impl Command {
    /// Commands the leader issues on its own, which need no request id.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Command::Expire { .. }
                | Command::SetNodeAlive { .. }
                | Command::DeregisterWorker { .. }
                | Command::AddReplicas { .. }
                | Command::DropReplicas { .. }
        )
    }
}

/// The result of applying a command, returned to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Nothing to report (membership and blank entries, deletes).
    Done,
    Model(ModelRecord),
    Job {
        id: u64,
    },
    Leased(LeaseGrant),
    /// The job has nothing left to hand out (or is not running).
    NoWork,
    Completed {
        accepted: bool,
        /// Blobs no version refers to: the results object a completion that did not count
        /// carried, or versions of its name pushed out.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        freed: Vec<FreedBlob>,
    },
    Released {
        released: bool,
    },
    Expired {
        count: usize,
    },
    /// A committed file version, and the blobs that no version refers to any more.
    Version {
        version: FileVersion,
        freed: Vec<FreedBlob>,
    },
    /// Blobs that no version refers to any more (their copies can be deleted).
    Freed {
        freed: Vec<FreedBlob>,
    },
    /// Whether a replica change found its blob.
    Replicas {
        known: bool,
    },
    /// Whether the worker was registered.
    Deregistered {
        known: bool,
    },
    Failed(CommandError),
}

/// What a lease hands out: enough for the leader to answer the worker without another read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub batch: BatchId,
    pub lease_id: u64,
    pub attempt: u32,
    pub deadline_ms: Millis,
    /// Index of the first input.
    pub start: u64,
    pub inputs: Vec<String>,
}

/// A command the state refused, deterministically, on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}
