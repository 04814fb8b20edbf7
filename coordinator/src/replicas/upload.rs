//! The write path of SDFS, on the leader: a client's upload is streamed, as it arrives, to R
//! storage nodes at once (hashing it on the way), acknowledged once a majority of them have
//! flushed it, and made visible only when its namespace entry commits. The other replicas
//! finish in the background (or are repaired); a replica that stops taking the upload is
//! dropped after the progress timeout. Nothing is visible after a failed put, and no node
//! keeps a truncated blob: a body that does not end cleanly ends with an error.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use idunno_api::file::{validate_path, FileVersion, StoredBlob};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::gc::collect_garbage;
use super::placement::choose_nodes;
use super::{storage, NodeError};
use crate::app::Coordinator;
use crate::capped::{capped, CapError};
use crate::error::ApiError;
use crate::state::command::{Command, Response};
use crate::state::files::{FreedBlob, NewVersion};

/// Body chunks buffered per replica stream: a slow node slows the put down rather than
/// filling memory.
const QUEUE: usize = 8;

/// What the leader hands a replica's body stream. Only [`Piece::End`] ends the body cleanly:
/// if the sender goes away without it (the put failed, was refused, or its client vanished),
/// the body ends with an error, so the request is aborted and the node keeps nothing —
/// never a truncated blob.
enum Piece {
    Data(Bytes),
    End,
}

/// One replica being written: its node, the sender of its body stream, its request.
struct ReplicaWrite {
    node: String,
    tx: Option<mpsc::Sender<Piece>>,
    task: JoinHandle<Result<StoredBlob, NodeError>>,
}

/// The body stream of one replica's request.
fn body_stream(rx: mpsc::Receiver<Piece>) -> reqwest::Body {
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Piece::Data(b)) => Some((Ok(b), Some(rx))),
            Some(Piece::End) => None,
            None => Some((Err(std::io::Error::other("the put was abandoned")), None)),
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Stores `body` as the next version of `path`, on `replicas` nodes (default: the cluster's
/// replication factor).
pub async fn put(
    c: &Arc<Coordinator>,
    path: &str,
    request_id: String,
    body: Body,
    declared_len: Option<u64>,
    replicas: Option<u32>,
) -> Result<FileVersion, ApiError> {
    validate_path(path).map_err(ApiError::BadRequest)?;
    let stored = store(c, body, declared_len, replicas).await?;
    let cmd = Command::PutVersion {
        path: path.to_string(),
        hash: stored.hash.clone(),
        size: stored.size,
        replicas: stored.replicas.clone(),
        target: stored.target,
        keep: c.config.keep_versions,
    };
    let version = match c.write(request_id, cmd).await? {
        Response::Version { version, freed } => {
            collect_garbage(c, freed);
            version
        }
        other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    };
    stored.committed(c);
    Ok(version)
}

/// A blob on a write quorum of storage nodes, flushed there, not yet in the namespace: the
/// caller commits a command that refers to it (a file version), then calls
/// [`Stored::committed`]. Until then no reader can see it; if nothing commits, the copies are
/// orphans that reconciliation deletes.
pub struct Stored {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    pub size: u64,
    /// Nodes that hold a flushed copy.
    pub replicas: Vec<String>,
    /// Replication factor wanted.
    pub target: u32,
    /// Replica writes still running when the quorum answered.
    late: FuturesUnordered<LateWrite>,
}

type LateWrite = std::pin::Pin<
    Box<dyn std::future::Future<Output = (String, Result<StoredBlob, NodeError>)> + Send>,
>;

impl Stored {
    /// The blob as a file version's command records it, keeping `keep` versions of the name.
    pub fn version(&self, keep: u32) -> NewVersion {
        NewVersion {
            hash: self.hash.clone(),
            size: self.size,
            replicas: self.replicas.clone(),
            target: self.target,
            keep,
        }
    }

    /// After the version that refers to the blob committed: late replicas join its replica
    /// set when they are done; failed ones are left to repair, which is woken only if the
    /// blob ends up short of its replication on the live nodes (a put that reached every
    /// node it wanted gives repair nothing to do, and its planning walks the namespace).
    pub fn committed(self, c: &Arc<Coordinator>) {
        let Stored {
            hash,
            replicas,
            target,
            mut late,
            ..
        } = self;
        if late.is_empty() {
            if short(c, replicas.len(), target) {
                c.repair_wake.notify_one();
            }
            return;
        }
        let c = c.clone();
        tokio::spawn(async move {
            let mut holders = replicas.len();
            while let Some((node, result)) = late.next().await {
                if let Ok(stored) = result {
                    if stored.hash == hash {
                        let cmd = Command::AddReplicas {
                            hash: hash.clone(),
                            nodes: vec![node.clone()],
                        };
                        match c.write(String::new(), cmd).await {
                            Ok(Response::Replicas { known: true }) => holders += 1,
                            // Freed meanwhile (the name was deleted already): this copy is
                            // garbage.
                            Ok(Response::Replicas { known: false }) => {
                                let freed = FreedBlob {
                                    hash: hash.clone(),
                                    replicas: vec![node],
                                };
                                collect_garbage(&c, vec![freed]);
                            }
                            _ => {}
                        }
                    }
                }
            }
            if short(&c, holders, target) {
                c.repair_wake.notify_one();
            }
        });
    }
}

/// Whether a blob held by `holders` nodes is short of `target` copies on the live nodes.
fn short(c: &Coordinator, holders: usize, target: u32) -> bool {
    let alive = c.shared.read().state.alive_nodes().count();
    holders < (target as usize).min(alive)
}

/// Streams `body` to `replicas` storage nodes at once (default: the cluster's replication
/// factor), hashing it on the way, and returns once a majority of them have flushed it.
pub async fn store(
    c: &Arc<Coordinator>,
    body: Body,
    declared_len: Option<u64>,
    replicas: Option<u32>,
) -> Result<Stored, ApiError> {
    let max = c.config.max_file_size;
    if declared_len.is_some_and(|l| l > max) {
        return Err(ApiError::PayloadTooLarge(format!(
            "files are limited to {max} bytes"
        )));
    }
    let target = replicas.unwrap_or(c.config.replication);
    if !(1..=16).contains(&target) {
        return Err(ApiError::BadRequest(format!(
            "replicas must be 1-16, not {target}"
        )));
    }
    let nodes: Vec<(String, String)> = {
        let applied = c.shared.read();
        let state = &applied.state;
        choose_nodes(state, target as usize, |_| true)
            .into_iter()
            .filter_map(|id| state.node(&id).map(|n| (id, n.addr.clone())))
            .collect()
    };
    if nodes.is_empty() {
        return Err(ApiError::Unavailable("no live storage nodes".into()));
    }
    let quorum = nodes.len() / 2 + 1;
    let client = storage(c);
    // A node may take a piece no slower than this; it may take longer to answer once the
    // body is complete (it fsyncs the whole blob first).
    let idle = client.timeout();
    let answer_within = idle * 3;
    let mut writes: Vec<ReplicaWrite> = nodes
        .into_iter()
        .map(|(node, addr)| {
            let (tx, rx) = mpsc::channel::<Piece>(QUEUE);
            let client = client.clone();
            let task = tokio::spawn(async move { client.put_blob(&addr, body_stream(rx)).await });
            ReplicaWrite {
                node,
                tx: Some(tx),
                task,
            }
        })
        .collect();

    // Stream the body to every replica, hashing it on the way.
    let mut hasher = blake3::Hasher::new();
    let mut size: u64 = 0;
    // Past the limit, the rest of the body is read (and dropped) before the 413, so that the
    // client gets the answer rather than a broken connection.
    let frames = capped(body, max);
    futures::pin_mut!(frames);
    let mut stalled = Vec::new();
    while let Some(frame) = frames.next().await {
        let chunk = match frame {
            Ok(chunk) => chunk,
            Err(CapError::TooLarge(_)) => {
                abort(writes, answer_within);
                return Err(ApiError::PayloadTooLarge(format!(
                    "files are limited to {max} bytes"
                )));
            }
            Err(e) => {
                abort(writes, answer_within);
                return Err(ApiError::BadRequest(format!("the upload broke off: {e}")));
            }
        };
        size += chunk.len() as u64;
        hasher.update(&chunk);
        let open = send_to_all(&mut writes, Piece::Data(chunk), idle, &mut stalled).await;
        if open < quorum {
            let reasons = give_up(writes, idle, answer_within, &stalled).await;
            return Err(ApiError::Unavailable(format!(
                "only {open} of the {quorum} replicas needed still take the upload: {}",
                reasons.join("; ")
            )));
        }
    }
    let hash = hasher.finalize().to_hex().to_string();
    // The one clean end of every replica's body.
    send_to_all(&mut writes, Piece::End, idle, &mut stalled).await;
    for w in &mut writes {
        w.tx = None;
    }

    // Wait for a write quorum; the rest finish in the background. A node that does not
    // answer in time counts as failed.
    let mut pending: FuturesUnordered<LateWrite> = writes
        .into_iter()
        .map(|mut w| -> LateWrite {
            Box::pin(async move {
                let result = match tokio::time::timeout(answer_within, &mut w.task).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(e)) => Err(NodeError {
                        addr: w.node.clone(),
                        reason: e.to_string(),
                        status: None,
                    }),
                    Err(_) => {
                        w.task.abort();
                        Err(NodeError {
                            addr: w.node.clone(),
                            reason: format!("no answer within {answer_within:?}"),
                            status: None,
                        })
                    }
                };
                (w.node, result)
            })
        })
        .collect();
    let mut stored = Vec::new();
    let mut failures = Vec::new();
    while stored.len() < quorum {
        let Some((node, result)) = pending.next().await else {
            break;
        };
        match result {
            Ok(blob) if blob.hash == hash && blob.size == size => stored.push(node),
            Ok(blob) => failures.push(format!(
                "{node} stored {} bytes hashing {}",
                blob.size, blob.hash
            )),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if stored.len() < quorum {
        return Err(ApiError::Unavailable(format!(
            "only {} of {quorum} replicas needed were stored: {}{}",
            stored.len(),
            failures.join("; "),
            describe_stalled(&stalled)
        )));
    }
    Ok(Stored {
        hash,
        size,
        replicas: stored,
        target,
        late: pending,
    })
}

/// Hands `piece` to every replica still writing; returns how many took it. A replica whose
/// queue stays full for `idle` (its node stopped reading) is dropped, so one hung node
/// cannot stall a put the others can finish.
async fn send_to_all(
    writes: &mut [ReplicaWrite],
    piece: Piece,
    idle: Duration,
    stalled: &mut Vec<String>,
) -> usize {
    let mut open = 0;
    for w in writes.iter_mut() {
        let Some(tx) = &w.tx else { continue };
        let piece = match &piece {
            Piece::Data(b) => Piece::Data(b.clone()),
            Piece::End => Piece::End,
        };
        match tokio::time::timeout(idle, tx.send(piece)).await {
            Ok(Ok(())) => open += 1,
            // That node's request failed; its task says why.
            Ok(Err(_)) => w.tx = None,
            Err(_) => {
                tracing::warn!(node = %w.node, "storage node stopped taking the upload; going on without it");
                stalled.push(w.node.clone());
                w.tx = None;
                w.task.abort();
            }
        }
    }
    open
}

/// Abandons a put that lost its quorum, and says why each lost replica failed: its node's
/// own answer where it gave one.
async fn give_up(
    writes: Vec<ReplicaWrite>,
    idle: Duration,
    grace: Duration,
    stalled: &[String],
) -> Vec<String> {
    let mut reasons: Vec<String> = stalled
        .iter()
        .map(|n| format!("{n} stopped taking the upload"))
        .collect();
    let mut rest = Vec::new();
    for mut w in writes {
        if w.tx.is_some() || stalled.contains(&w.node) {
            rest.push(w);
            continue;
        }
        // Its request failed (that is why it stopped taking pieces): its task says why.
        match tokio::time::timeout(idle, &mut w.task).await {
            Ok(Ok(Err(e))) => reasons.push(e.to_string()),
            Ok(Ok(Ok(_))) => reasons.push(format!("{} answered before the end", w.node)),
            Ok(Err(e)) => reasons.push(format!("{}: {e}", w.node)),
            Err(_) => {
                w.task.abort();
                reasons.push(format!("{}: its request failed", w.node));
            }
        }
    }
    abort(rest, grace);
    reasons
}

fn describe_stalled(stalled: &[String]) -> String {
    if stalled.is_empty() {
        String::new()
    } else {
        format!(" (stalled: {})", stalled.join(", "))
    }
}

/// Abandons every replica write: their bodies end with an error (the senders go without
/// [`Piece::End`]), so each node discards what it received. Requests that do not end by
/// themselves (a hung node) are cancelled after `grace`.
fn abort(writes: Vec<ReplicaWrite>, grace: Duration) {
    for w in writes {
        drop(w.tx);
        let mut task = w.task;
        tokio::spawn(async move {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        });
    }
}
