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

    /// A node registers or is heard from again after it was dead: its holdings are to be
    /// reconciled before repair copies to it, and copies that failed while it was down
    /// (the leader had not yet marked it dead) say nothing about it now — without this, a
    /// node back within [`FAILED_TARGET_BACKOFF`] of its crash would get no copies for the
    /// rest of it, and blobs it could take stay short of their replicas.
    pub fn rejoined(&mut self, id: &str) {
        self.to_reconcile.insert(id.to_string());
        self.failed_copies.remove(id);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_back_from_a_crash_is_a_copy_target_again_once_reconciled() {
        let mut s = StorageMonitor::default();
        // Copies to s1 and s2 failed: both crashed, not yet marked dead.
        s.copy_failed("s1");
        s.copy_failed("s2");
        assert!(s.avoid_as_targets().contains("s1"));
        // s1 comes back: avoided until its holdings are reconciled, then a target again.
        s.rejoined("s1");
        assert!(s.avoid_as_targets().contains("s1"));
        s.to_reconcile.remove("s1");
        let avoid = s.avoid_as_targets();
        assert!(!avoid.contains("s1"), "{avoid:?}");
        // s2 did not come back: still avoided for the backoff.
        assert!(avoid.contains("s2"), "{avoid:?}");
    }
}
