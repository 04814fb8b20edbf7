//! Re-replication: copying a blob from another storage node into this one, streamed straight
//! into the store and checked against the hash it is asked for. The coordinator decides what
//! to copy where; this only does one copy.

use std::time::Duration;

use futures::StreamExt;
use idunno_api::client::describe_error;
use idunno_api::file::StoredBlob;
use idunno_api::storage_node::StorageNodeClient;
use tokio::sync::watch;

use crate::blob_store::BlobStore;
use crate::error::SdfsError;
use crate::hash::BlobHash;
use crate::transfer::{blocking, store_stream};

/// Longest a whole copy may take (the coordinator bounds its call by the blob's size).
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Copies blob `hash` from the node at `from` (`host:port`), unless it is already here.
pub async fn fetch_blob(
    store: &BlobStore,
    nodes: &StorageNodeClient,
    from: &str,
    hash: BlobHash,
    shutdown: watch::Receiver<bool>,
) -> Result<StoredBlob, SdfsError> {
    validate_addr(from)?;
    let s = store.clone();
    // Already here: counted as stored again, so a delete of it issued before this copy was
    // asked for is refused (the coordinator is about to list this node as a holder).
    if let Some(meta) = blocking(move || s.touch(&hash)).await? {
        return Ok(StoredBlob {
            hash: hash.to_hex(),
            size: meta.size,
        });
    }
    let response = nodes
        .get_blob(from, &hash.to_hex(), COPY_TIMEOUT)
        .await
        .map_err(|e| SdfsError::Upstream(e.to_string()))?;
    let source = from.to_string();
    let content = response.bytes_stream().map(move |piece| {
        piece.map_err(|e| {
            SdfsError::Upstream(format!("reading from {source}: {}", describe_error(&e)))
        })
    });
    match store_stream(store, content, Some(hash), shutdown).await {
        // The source served other bytes than it claims to hold: its fault, not ours.
        Err(SdfsError::HashMismatch { actual, .. }) => Err(SdfsError::Upstream(format!(
            "{from} served content hashing to {actual}, not {hash}"
        ))),
        other => other,
    }
}

/// A node address is `host:port` (or a base URL): no path, no spaces.
fn validate_addr(from: &str) -> Result<(), SdfsError> {
    let rest = from
        .strip_prefix("http://")
        .or_else(|| from.strip_prefix("https://"))
        .unwrap_or(from);
    let ok = !rest.is_empty()
        && rest.len() <= 255
        && rest.contains(':')
        && !rest.contains(['/', '?', '#', '@'])
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(SdfsError::BadRequest(format!(
            "{from:?} is not a node address (host:port)"
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_host_and_port() {
        for ok in ["127.0.0.1:7101", "node-2:80", "http://a:1", "[::1]:7101"] {
            assert!(super::validate_addr(ok).is_ok(), "{ok}");
        }
        for bad in ["", "host", "a:1/x", "a b:1", "http://", "u@h:1"] {
            assert!(super::validate_addr(bad).is_err(), "{bad}");
        }
    }
}
