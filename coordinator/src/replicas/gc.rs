//! Garbage collection of blob copies: a blob no file version uses any more is deleted from
//! its storage nodes after a grace period, and only if no put stored it again meanwhile
//! (the nodes' stamps). Reconciliation (`repair.rs`) deletes whatever this misses.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};

use super::{storage, Deletion, StorageNodeClient};
use crate::app::Coordinator;
use crate::state::files::FreedBlob;

/// Copies looked at (stamped, deleted) at once.
const PARALLEL: usize = 8;

/// Deletes the copies of blobs no version uses any more, after the grace period: readers
/// that resolved a version before it was freed finish first. Each copy's stamp is read now
/// and the delete is conditional on it, so a copy that a put of the same content stores
/// again meanwhile (a deduplicated write the put will commit a version for) is kept; and a
/// blob some version uses again by then is not touched. Best effort: reconciliation deletes
/// whatever this misses (a node that was down, a leader that changed).
pub fn collect_garbage(c: &Arc<Coordinator>, freed: Vec<FreedBlob>) {
    if freed.is_empty() {
        return;
    }
    let c = c.clone();
    tokio::spawn(async move {
        let nodes = storage(&c);
        let copies: Vec<(String, String)> = {
            let applied = c.shared.read();
            freed
                .iter()
                .flat_map(|blob| {
                    blob.replicas.iter().filter_map(|node| {
                        let addr = applied.state.node(node)?.addr.clone();
                        Some((blob.hash.clone(), addr))
                    })
                })
                .collect()
        };
        let mut stamped: Vec<(String, String, u64)> = stream::iter(copies)
            .map(|(hash, addr)| {
                let nodes = nodes.clone();
                async move {
                    match nodes.blob_stamp(&addr, &hash).await {
                        Ok(Some(stamp)) => Some((hash, addr, stamp)),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::debug!(error = %e, "freed copy not stamped; reconciliation deletes it");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(PARALLEL)
            .filter_map(std::future::ready)
            .collect()
            .await;
        let mut shutdown = c.shutdown.clone();
        for _ in 0..FREED_ATTEMPTS {
            if stamped.is_empty() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(c.config.gc_grace_ms)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            stamped = stream::iter(stamped)
                .map(|(hash, addr, stamp)| delete_freed_copy(&c, &nodes, hash, addr, stamp))
                .buffer_unordered(PARALLEL)
                .filter_map(std::future::ready)
                .collect()
                .await;
        }
    });
}

/// How often a freed copy that was stored again meanwhile is looked at once more.
const FREED_ATTEMPTS: usize = 3;

/// Deletes one freed copy whose grace period is over, if the blob is still unused and the
/// copy was not stored again. A copy stored again (a repair copy, a put still in flight)
/// comes back with its new stamp, for another grace period.
async fn delete_freed_copy(
    c: &Coordinator,
    nodes: &StorageNodeClient,
    hash: String,
    addr: String,
    stamp: u64,
) -> Option<(String, String, u64)> {
    // Only the leader's namespace is current; a new leader's reconciliation takes over.
    if !c.is_leader() || c.shared.read().state.blob(&hash).is_some() {
        return None;
    }
    match nodes.delete_blob(&addr, &hash, Some(stamp)).await {
        Ok(Deletion::Gone) => {
            tracing::debug!(%hash, %addr, "freed copy deleted");
            None
        }
        Ok(Deletion::Kept) => {
            tracing::debug!(%hash, %addr, "freed copy stored again; looking again later");
            match nodes.blob_stamp(&addr, &hash).await {
                Ok(Some(now)) => Some((hash, addr, now)),
                _ => None,
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "freed copy not deleted; reconciliation will");
            None
        }
    }
}
