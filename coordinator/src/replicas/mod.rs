//! The coordinator's side of SDFS, the data path: where a file's bytes go (placement),
//! moving them to and from storage nodes (upload, download), keeping every blob at its
//! replication factor (repair) and deleting copies no version uses (gc), through the one
//! client of the storage nodes' internal routes (`idunno_api::storage_node`). The namespace itself is replicated
//! state ([`crate::state::files`]); the leader's watch over the storage nodes is
//! [`crate::leader::node_watch`]; blobs live on storage nodes (the `sdfs` crate).

pub mod download;
pub mod gc;
pub mod placement;
pub mod repair;
pub mod upload;

pub use idunno_api::storage_node::{Deletion, NodeError, StorageNodeClient};

use crate::app::Coordinator;

/// The coordinator's storage-node client with its configured progress timeout.
pub fn storage(c: &Coordinator) -> StorageNodeClient {
    c.nodes.with_timeout(c.config.storage_timeout())
}
