//! Lease expiry, run by the leader: a lease ends when its worker has been silent for one lease
//! timeout, or when it outlives its deadline. The expiry itself is a Raft command, so every
//! replica puts the batch back in the queue at the same point of the log.
//!
//! Who is silent is this node's own knowledge, not the leader's: workers heartbeat every
//! coordinator, so each node knows when it last heard from each worker, across leadership
//! changes. A new leader therefore expires a dead worker's leases on the dead worker's
//! schedule — however often the leader changes — instead of waiting a lease timeout from its
//! own takeover. A worker this node has never heard from counts as silent once the node has
//! been up for a few heartbeat intervals (a live one would have been heard by then).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::Coordinator;
use crate::leader::workers::Workers;
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
            if !coordinator.online.is_empty() {
                coordinator
                    .online
                    .fail_all("this coordinator no longer leads; retry the request");
            }
            continue;
        }
        reclaim_online(&coordinator);
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
                coordinator.metrics.leases_expired.inc_by(count as u64);
                tracing::info!(count, "expired leases of silent workers");
            }
            Err(e) => tracing::debug!(error = %e, "lease expiry not committed"),
        }
    }
}

/// Online batches of silent workers (or running past [`ONLINE_MAX_RUN`]) go back to their
/// queues; online requests past their deadline are answered.
fn reclaim_online(coordinator: &Coordinator) {
    let running = coordinator.online.running_workers();
    let timeout = coordinator.config.lease_timeout();
    let now = Instant::now();
    let gone: std::collections::HashSet<String> = {
        let workers = coordinator.workers();
        running
            .into_iter()
            .filter(|w| {
                workers
                    .last_seen(w)
                    .is_none_or(|heard| now.saturating_duration_since(heard) > timeout)
            })
            .collect()
    };
    let reclaimed = coordinator
        .online
        .reclaim(|w| gone.contains(w), ONLINE_MAX_RUN, now);
    if reclaimed > 0 {
        tracing::info!(
            batches = reclaimed,
            "online batches of silent workers run again"
        );
    }
}

/// Longest an online batch may run on a worker that still heartbeats before it is handed to
/// another (its requests' deadlines are usually shorter).
const ONLINE_MAX_RUN: Duration = Duration::from_secs(120);

/// How long a worker this node never heard from is given after the node started: three
/// heartbeat intervals, and no more than a lease timeout.
pub fn unheard_grace(heartbeat: Duration, lease_timeout: Duration) -> Duration {
    (heartbeat * 3).min(lease_timeout)
}

/// The leases whose holder went silent or whose deadline passed.
fn expired_leases(coordinator: &Coordinator, now: Instant, now_ms: u64) -> Vec<(BatchId, u64)> {
    let timeout = coordinator.config.lease_timeout();
    let grace = unheard_grace(
        Duration::from_millis(coordinator.config.worker_heartbeat_ms),
        timeout,
    );
    // Lock order everywhere: the shared state first, then the workers.
    let applied = coordinator.shared.read();
    let mut workers = coordinator.workers();
    workers.forget_silent(timeout * 20);
    let up = now.saturating_duration_since(coordinator.started);
    let leases = applied
        .state
        .leases()
        .map(|(batch, lease, worker, _, deadline)| (batch, lease, worker, deadline));
    silent_or_late(leases, &workers, now, now_ms, up, timeout, grace)
}

/// Of `leases` (batch, lease id, worker, deadline), those of a worker silent for `timeout`
/// (or never heard from by a node up for more than `grace`) or past their deadline.
fn silent_or_late<'a>(
    leases: impl Iterator<Item = (BatchId, u64, &'a str, u64)>,
    workers: &Workers,
    now: Instant,
    now_ms: u64,
    up: Duration,
    timeout: Duration,
    grace: Duration,
) -> Vec<(BatchId, u64)> {
    leases
        .filter(|(_, _, worker, deadline)| {
            let silent = match workers.last_seen(worker) {
                Some(heard) => now.saturating_duration_since(heard) > timeout,
                None => up > grace,
            };
            silent || now_ms > *deadline
        })
        .map(|(batch, lease, ..)| (batch, lease))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> BatchId {
        BatchId { job: 1, seq }
    }

    #[test]
    fn silence_is_judged_from_this_node_s_own_record() {
        let mut workers = Workers::default();
        workers.seen("alive");
        workers.seen("quiet");
        let timeout = Duration::from_secs(5);
        let grace = Duration::from_millis(1500);
        let later = Instant::now() + Duration::from_secs(6);
        let leases = [
            (batch(0), 10, "alive", u64::MAX),
            (batch(1), 11, "quiet", u64::MAX),
            (batch(2), 12, "unknown", u64::MAX),
            (batch(3), 13, "alive", 50),
        ];
        // Just now: nobody silent; the unknown worker is within the node's start-up grace; the
        // lease past its deadline goes.
        let now = Instant::now();
        let up = Duration::from_millis(500);
        let expired = silent_or_late(leases.into_iter(), &workers, now, 100, up, timeout, grace);
        assert_eq!(expired, vec![(batch(3), 13)]);
        // Up for longer than the grace: the worker never heard from is silent.
        let up = Duration::from_secs(2);
        let expired = silent_or_late(leases.into_iter(), &workers, now, 0, up, timeout, grace);
        assert_eq!(expired, vec![(batch(2), 12)]);
        // A lease timeout later, with nobody heard meanwhile: every holder is silent; no
        // takeover grace, whoever leads now.
        let expired = silent_or_late(leases.into_iter(), &workers, later, 0, up, timeout, grace);
        assert_eq!(expired.len(), 4);
    }

    #[test]
    fn the_start_up_grace_is_a_few_heartbeats_and_never_more_than_the_timeout() {
        let s = Duration::from_secs;
        assert_eq!(
            unheard_grace(Duration::from_millis(500), s(5)),
            Duration::from_millis(1500)
        );
        assert_eq!(unheard_grace(s(4), s(5)), s(5));
    }
}
