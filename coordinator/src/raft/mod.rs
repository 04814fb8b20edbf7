//! The Raft layer: openraft's type configuration, the sled-backed log and state machine, and
//! the HTTP transport between coordinators. What the entries mean lives in [`crate::state`].

// openraft's storage traits return its large `StorageError`; our helpers return the same type
// rather than boxing it only to unbox it at the trait boundary.
#![allow(clippy::result_large_err)]

pub mod links;
pub mod log_store;
pub mod network;
pub mod routes;
pub mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::command::{Request, Response};

/// The leader's answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndex {
    /// Index the reader must have applied before reading (`None`: nothing committed yet).
    pub index: Option<u64>,
}

/// A Raft log entry's application payload: requests grouped by the leader's proposer so that
/// many concurrent writes share one log append and one fsync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal(pub Vec<Request>);

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proposal of {} request(s)", self.0.len())
    }
}

/// The responses to a [`Proposal`]'s requests, in order (empty for blank and membership entries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome(pub Vec<Response>);

openraft::declare_raft_types!(
    /// IDunno's Raft types: u64 node ids, nodes addressed by `host:port`.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;

/// Maps a storage failure into openraft's error for the given subject.
fn io_err(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}
