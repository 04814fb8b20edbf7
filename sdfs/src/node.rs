//! A storage node's context: [`Node`], what every request handler and the heartbeat task of
//! one node hold. Starting and stopping a node is `lib.rs`'s business.

use idunno_api::storage_node::StorageNodeClient;
use tokio::sync::watch;

use crate::blob_store::BlobStore;
use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// Everything a request handler or a background task of this node needs.
pub struct Node {
    pub config: NodeConfig,
    /// The address registered with the coordinators (advertised, or the bound one).
    pub addr: String,
    pub store: BlobStore,
    /// For fetching blobs from other nodes (its own connection pool, the cluster secret).
    pub peers: StorageNodeClient,
    pub metrics: Metrics,
    /// Turns true once when the node shuts down; long transfers watch it.
    pub shutdown: watch::Receiver<bool>,
}
