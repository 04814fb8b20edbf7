//! Lease expiry, run by the leader: a lease ends when its worker has been silent for one lease
//! timeout, or when it outlives its deadline. The expiry itself is a Raft command, so every
//! replica puts the batch back in the queue at the same point of the log.
//!
//! A new leader has no heartbeat history, so it counts every worker as heard from at the moment
//! it took over: a failover alone never re-runs work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node::Coordinator;
use crate::proposer::now_ms;
use crate::state::command::Command;
use crate::state::jobs::BatchId;

/// How often the leader looks for dead leases.
const SCAN_EVERY: Duration = Duration::from_millis(200);

/// The expiry loop; ends at shutdown.
pub async fn expire_leases(coordinator: Arc<Coordinator>) {
    let mut shutdown = coordinator.shutdown.clone();
    let mut tick = tokio::time::interval(SCAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !coordinator.is_leader() {
            continue;
        }
        let expired = expired_leases(&coordinator, Instant::now(), now_ms());
        if expired.is_empty() {
            continue;
        }
        let count = expired.len();
        match coordinator
            .write(String::new(), Command::Expire { leases: expired })
            .await
        {
            Ok(_) => {
                coordinator.metrics.leases_expired.add(count as u64);
                tracing::info!(count, "expired leases of silent workers");
            }
            Err(e) => tracing::debug!(error = %e, "lease expiry not committed"),
        }
    }
}

/// The leases whose holder went silent or whose deadline passed.
fn expired_leases(coordinator: &Coordinator, now: Instant, now_ms: u64) -> Vec<(BatchId, u64)> {
    let timeout = coordinator.config.lease_timeout();
    // Lock order everywhere: the shared state first, then the leader's soft state.
    let applied = coordinator.shared.read();
    let mut leader = coordinator.leader_state();
    if now.saturating_duration_since(leader.since) < timeout {
        return Vec::new();
    }
    leader.workers.forget_silent(timeout * 20);
    let since = leader.since;
    applied
        .state
        .leases()
        .filter(|(_, _, worker, _, deadline)| {
            let heard = leader.workers.last_seen(worker).unwrap_or(since).max(since);
            now.saturating_duration_since(heard) > timeout || now_ms > *deadline
        })
        .map(|(batch, lease, ..)| (batch, lease))
        .collect()
}
