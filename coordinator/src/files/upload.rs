//! The write path of SDFS, on the leader: a client's upload is streamed, as it arrives, to R
//! storage nodes at once (hashing it on the way), acknowledged once a majority of them have
//! flushed it, and made visible only when its namespace entry commits. The other replicas
//! finish in the background (or are repaired). Nothing is visible after a failed put.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use idunno_api::file::{validate_path, FileVersion, StoredBlob};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::node_client::NodeError;
use super::placement::choose_nodes;
use super::repair::collect_garbage;
use crate::error::ApiError;
use crate::node::Coordinator;
use crate::state::command::{Command, Response};

/// Body chunks buffered per replica stream: a slow node slows the put down rather than
/// filling memory.
const QUEUE: usize = 8;

/// One replica being written: its node, the sender of its body stream, its request.
struct ReplicaWrite {
    node: String,
    tx: Option<mpsc::Sender<Bytes>>,
    task: JoinHandle<Result<StoredBlob, NodeError>>,
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
    let mut writes: Vec<ReplicaWrite> = nodes
        .into_iter()
        .map(|(node, addr)| {
            let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
            });
            let client = c.nodes.clone();
            let task = tokio::spawn(async move {
                client
                    .put_blob(&addr, reqwest::Body::wrap_stream(stream))
                    .await
            });
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
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let chunk = match frame {
            Ok(chunk) => chunk,
            Err(e) => {
                abort(writes);
                return Err(ApiError::BadRequest(format!("the upload broke off: {e}")));
            }
        };
        size += chunk.len() as u64;
        if size > max {
            abort(writes);
            return Err(ApiError::PayloadTooLarge(format!(
                "files are limited to {max} bytes"
            )));
        }
        hasher.update(&chunk);
        let mut open = 0;
        for w in &mut writes {
            if let Some(tx) = &w.tx {
                if tx.send(chunk.clone()).await.is_err() {
                    w.tx = None; // that node's request failed; its task says why
                } else {
                    open += 1;
                }
            }
        }
        if open < quorum {
            break;
        }
    }
    let hash = hasher.finalize().to_hex().to_string();
    for w in &mut writes {
        w.tx = None; // end of every replica's body
    }

    // Wait for a write quorum; the rest finish in the background.
    let mut pending: FuturesUnordered<_> = writes
        .into_iter()
        .map(|w| async move { (w.node, w.task.await) })
        .collect();
    let mut stored = Vec::new();
    let mut failures = Vec::new();
    while stored.len() < quorum {
        let Some((node, result)) = pending.next().await else {
            break;
        };
        match result {
            Ok(Ok(blob)) if blob.hash == hash && blob.size == size => stored.push(node),
            Ok(Ok(blob)) => failures.push(format!(
                "{node} stored {} bytes hashing {}",
                blob.size, blob.hash
            )),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(format!("{node}: {e}")),
        }
    }
    if stored.len() < quorum {
        return Err(ApiError::Unavailable(format!(
            "only {} of {quorum} replicas needed were stored: {}",
            stored.len(),
            failures.join("; ")
        )));
    }

    let cmd = Command::PutVersion {
        path: path.to_string(),
        hash: hash.clone(),
        size,
        replicas: stored,
        target,
        keep: c.config.keep_versions,
    };
    let version = match c.write(request_id, cmd).await? {
        Response::Version { version, freed } => {
            collect_garbage(c, freed);
            version
        }
        other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    };

    // Late replicas join the set when they are done; failed ones are left to repair.
    let c = c.clone();
    tokio::spawn(async move {
        while let Some((node, result)) = pending.next().await {
            if let Ok(Ok(blob)) = result {
                if blob.hash == hash {
                    let cmd = Command::AddReplicas {
                        hash: hash.clone(),
                        nodes: vec![node],
                    };
                    let _ = c.write(String::new(), cmd).await;
                }
            }
        }
        c.repair_wake.notify_one();
    });
    Ok(version)
}

/// Cancels every replica write (their nodes drop the partial blobs).
fn abort(writes: Vec<ReplicaWrite>) {
    for w in writes {
        w.task.abort();
    }
}
