//! The leader's watch over storage nodes: heartbeats are soft state; a node silent for the
//! node timeout is marked dead (a Raft command), one heard from again is marked alive and its
//! holdings are reconciled. Like worker leases, a new leader counts every node as heard from
//! when it took over.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::Coordinator;
use crate::replicas::repair::FAILED_TARGET_BACKOFF;
use crate::state::command::Command;

/// How often the leader checks liveness.
const CHECK_EVERY: Duration = Duration::from_millis(100);

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

/// The liveness loop; ends at shutdown.
pub async fn watch_nodes(c: Arc<Coordinator>) {
    let mut shutdown = c.shutdown.clone();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !c.is_leader() {
            continue;
        }
        for (id, alive) in liveness_changes(&c) {
            if alive {
                c.leader_state().storage.to_reconcile.insert(id.clone());
            }
            let cmd = Command::SetNodeAlive {
                id: id.clone(),
                alive,
            };
            match c.write(String::new(), cmd).await {
                Ok(_) => {
                    if alive {
                        tracing::info!(node = %id, "storage node is back");
                    } else {
                        tracing::warn!(node = %id, "storage node is dead");
                    }
                    c.repair_wake.notify_one();
                }
                Err(e) => tracing::debug!(error = %e, "liveness change not committed"),
            }
        }
    }
}

/// Nodes whose liveness in the namespace disagrees with their heartbeats.
fn liveness_changes(c: &Coordinator) -> Vec<(String, bool)> {
    let timeout = Duration::from_millis(c.config.node_timeout_ms);
    let now = Instant::now();
    let applied = c.shared.read();
    let leader = c.leader_state();
    let in_grace = now.saturating_duration_since(leader.since) < timeout;
    applied
        .state
        .nodes()
        .filter_map(|n| {
            let seen = leader.storage.last_seen(&n.id);
            let heard = seen.unwrap_or(leader.since).max(leader.since);
            let silent = now.saturating_duration_since(heard) > timeout;
            if n.alive && silent && !in_grace {
                Some((n.id.clone(), false))
            } else if !n.alive && seen.is_some_and(|t| now.saturating_duration_since(t) < timeout) {
                Some((n.id.clone(), true))
            } else {
                None
            }
        })
        .collect()
}
