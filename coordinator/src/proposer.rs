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
/// Most encoded bytes of requests in one log entry. A request larger than this (a job listing
/// many inputs) goes in an entry of its own; one entry is never larger than one request or
/// this cap, so replication stays steady whatever the mix of writes.
const MAX_BATCH_BYTES: usize = 1 << 20;

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
    // A request that did not fit the previous entry: it opens the next one.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Everything that queued up while we waited for a slot goes into this entry.
        let (batch, rest) = fill(first, &mut rx, MAX_BATCH, MAX_BATCH_BYTES);
        carried = rest;
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

/// Takes queued requests after `first` into one entry while it stays within `max` requests
/// and `max_bytes` encoded bytes; returns the entry and the request that did not fit, if any.
fn fill(
    first: Pending,
    rx: &mut mpsc::UnboundedReceiver<Pending>,
    max: usize,
    max_bytes: usize,
) -> (Vec<Pending>, Option<Pending>) {
    let mut bytes = encoded_len(&first.request);
    let mut batch = vec![first];
    while batch.len() < max {
        let Ok(next) = rx.try_recv() else {
            break;
        };
        let len = encoded_len(&next.request);
        if bytes + len > max_bytes {
            return (batch, Some(next));
        }
        bytes += len;
        batch.push(next);
    }
    (batch, None)
}

/// The size of a request in the log entry, counted without building the bytes.
fn encoded_len(request: &Request) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing plain data into a counter cannot fail; a failure would only undercount.
    let _ = serde_json::to_writer(&mut count, request);
    count.0
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::Command;

    fn pending(name: &str) -> (Pending, oneshot::Receiver<Result<Response, ProposeError>>) {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            id: String::new(),
            time_ms: 0,
            cmd: Command::DeleteModel { name: name.into() },
        };
        (Pending { request, reply }, rx)
    }

    fn names(batch: &[Pending]) -> Vec<String> {
        batch
            .iter()
            .map(|p| match &p.request.cmd {
                Command::DeleteModel { name } => name.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_entry_is_capped_by_bytes_and_a_large_request_goes_alone_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut keep = Vec::new();
        let big = "b".repeat(3000);
        for name in ["a", "b", &big, "c", "d"] {
            let (p, r) = pending(name);
            keep.push(r);
            tx.send(p).unwrap();
        }
        let cap = 2000;
        let first = rx.try_recv().unwrap();
        let (batch, rest) = fill(first, &mut rx, 256, cap);
        assert_eq!(names(&batch), ["a", "b"]);
        // The big one opens the next entry by itself although it is over the cap.
        let (batch, rest) = fill(rest.unwrap(), &mut rx, 256, cap);
        assert_eq!(names(&batch), [big]);
        let (batch, rest) = fill(rest.unwrap(), &mut rx, 256, cap);
        assert_eq!(names(&batch), ["c", "d"]);
        assert!(rest.is_none());
        // The count cap still applies.
        for name in ["e", "f", "g"] {
            let (p, r) = pending(name);
            keep.push(r);
            tx.send(p).unwrap();
        }
        let first = rx.try_recv().unwrap();
        let (batch, _) = fill(first, &mut rx, 2, cap);
        assert_eq!(names(&batch), ["e", "f"]);
    }
}
