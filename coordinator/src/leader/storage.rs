//! What the leader remembers of storage nodes: when each last sent a heartbeat, what it
//! reported holding, which need their holdings reconciled, and which repair targets failed
//! recently. Soft state; the loop that acts on it is [`super::node_watch`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a node a copy to failed (hung, full, broken) is not chosen as a copy target,
/// so that one bad node cannot hold a blob under-replicated while others could take it.
pub const FAILED_TARGET_BACKOFF: Duration = Duration::from_secs(30);

/// Heartbeat soft state of the storage nodes.
#[derive(Debug, Default)]
pub struct StorageMonitor {
    last_seen: HashMap<String, Instant>,
    /// (blobs, bytes) each node last reported.
    reported: HashMap<String, (u64, u64)>,
    /// Nodes whose holdings should be compared with the namespace. A node is added before
    /// it is marked alive, so repair never copies to it what it may already hold.
    pub to_reconcile: HashSet<String>,
    /// When a copy to a node last failed.
    failed_copies: HashMap<String, Instant>,
}

impl StorageMonitor {
    /// Records a heartbeat.
    pub fn heard(&mut self, id: &str, blobs: u64, bytes: u64) {
        self.last_seen.insert(id.to_string(), Instant::now());
        self.reported.insert(id.to_string(), (blobs, bytes));
    }

    /// When this leader last heard from the node.
    pub fn last_seen(&self, id: &str) -> Option<Instant> {
        self.last_seen.get(id).copied()
    }

    /// Records that a copy to `id` failed: repair avoids it as a target for a while.
    pub fn copy_failed(&mut self, id: &str) {
        self.failed_copies.insert(id.to_string(), Instant::now());
    }

    /// Nodes repair must not copy to now: those waiting to be reconciled and those a copy
    /// failed on within [`FAILED_TARGET_BACKOFF`].
    pub fn avoid_as_targets(&mut self) -> HashSet<String> {
        self.failed_copies
            .retain(|_, at| at.elapsed() < FAILED_TARGET_BACKOFF);
        self.to_reconcile
            .iter()
            .chain(self.failed_copies.keys())
            .cloned()
            .collect()
    }

    /// What the node last reported holding.
    pub fn reported(&self, id: &str) -> Option<(u64, u64)> {
        self.reported.get(id).copied()
    }
}
