//! The leader's watch over storage nodes: heartbeats are soft state; a node silent for the
//! node timeout is marked dead (a Raft command), one heard from again is marked alive and its
//! holdings are reconciled. Like worker leases, a new leader counts every node as heard from
//! when it took over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::Coordinator;
use crate::state::command::Command;

/// How often the leader checks liveness.
const CHECK_EVERY: Duration = Duration::from_millis(100);

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
                c.leader_state().storage.rejoined(&id);
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
