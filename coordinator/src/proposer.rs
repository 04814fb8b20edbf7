//! Group commit: the leader's single path into the Raft log.
//!
//! Writes queue here; a task takes everything queued at once and proposes it as ONE log entry
//! (one append, one fsync on each node), with at most [`IN_FLIGHT`] entries being committed at
//! a time. Under load, requests accumulate while earlier entries commit, so the batch grows
//! with the load instead of the fsync count. Each request is stamped with the leader's clock.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::raft::{NodeId, Proposal, Raft};
use crate::state::command::{Command, Request, Response};

/// Log entries being committed at once.
const IN_FLIGHT: usize = 4;
/// Most requests in one log entry (keeps an append RPC well inside a heartbeat interval).
const MAX_BATCH: usize = 256;

/// Why a proposal did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader (any more); `leader` is the one it knows of.
    #[error("this node is not the leader")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// Raft is shutting down or failed.
    #[error("raft stopped: {0}")]
    Stopped(String),
}

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Response, ProposeError>>,
}

/// A handle to the proposer task; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the proposer task for `raft`. It ends when every handle is dropped.
    pub fn spawn(raft: Raft) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Commits `cmd` (with the client's request id, or none) and returns what applying it gave.
    pub async fn propose(&self, id: String, cmd: Command) -> Result<Response, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            id,
            time_ms: 0,
            cmd,
        };
        self.tx
            .send(Pending { request, reply })
            .map_err(|_| ProposeError::Stopped("proposer stopped".into()))?;
        rx.await
            .map_err(|_| ProposeError::Stopped("proposal dropped".into()))?
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Everything that queued up while we waited for a slot goes into this entry.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let (requests, replies): (Vec<Request>, Vec<_>) = batch
            .into_iter()
            .map(|mut p| {
                p.request.time_ms = now;
                (p.request, p.reply)
            })
            .unzip();
        let raft = raft.clone();
        tokio::spawn(async move {
            let result = raft.client_write(Proposal(requests)).await;
            drop(permit);
            match result {
                Ok(written) => {
                    let mut responses = written.data.0.into_iter();
                    for reply in replies {
                        let r = responses
                            .next()
                            .ok_or_else(|| ProposeError::Stopped("missing response".into()));
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    let e = map_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

fn map_error(e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
            leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ProposeError::Stopped(e.to_string())
        }
        RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
    }
}

/// The leader's wall clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
