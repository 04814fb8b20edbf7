//! Lease expiry, run by the leader: a lease ends when its worker has been silent for one lease
//! timeout, or when it outlives its deadline. The expiry itself is a Raft command, so every
//! replica puts the batch back in the queue at the same point of the log.
//!
//! A new leader has no heartbeat history, so it counts every worker as heard from at the moment
//! it took over: a failover alone never re-runs work. "Took over" is this term's takeover: the
//! soft state is checked against the current term before anything is expired.

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
    // Checked against the current term (and reset if it is an earlier term's): an old term's
    // takeover time and heartbeat times would expire live workers' leases at once.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoordinatorConfig;
    use crate::node::LeaderState;
    use crate::state::command::Response;
    use idunno_api::job::Inputs;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn soft_state_of_an_earlier_term_never_expires_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CoordinatorConfig::new(1, dir.path().join("c1"));
        config.lease_timeout_ms = 200;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = crate::start(config, listener).await.unwrap();
        let c = node.coordinator.clone();
        c.wait_for_leader(Duration::from_secs(10)).await.unwrap();
        let put = Command::PutModel {
            name: "r18".into(),
            arch: "resnet18".into(),
            weights: "w".into(),
            input_size: 224,
            cost_ms: None,
        };
        c.write("m".into(), put).await.unwrap();
        let job = Command::CreateJob {
            name: None,
            model: "r18".into(),
            inputs: Inputs::List(vec!["a.png".into()]),
            batch_size: 1,
            weight: 1,
            start: true,
        };
        let Response::Job { id } = c.write("j".into(), job).await.unwrap() else {
            panic!("no job")
        };
        let lease = Command::Lease {
            worker: "w1".into(),
            job: id,
            lease_timeout_ms: 60_000,
        };
        assert!(matches!(
            c.write(String::new(), lease).await.unwrap(),
            Response::Leased(_)
        ));
        // What a node that led before and leads again holds until `watch_leadership` runs:
        // an earlier term's state, taken over long ago, that never heard from w1.
        let term = c.raft.metrics().borrow().current_term;
        {
            let mut stale = LeaderState::new(term - 1);
            stale.since = Instant::now()
                .checked_sub(Duration::from_secs(5))
                .unwrap_or(stale.since);
            *c.leader_state_unchecked() = stale;
        }
        assert!(expired_leases(&c, Instant::now(), now_ms()).is_empty());
        assert_eq!(c.leader_state_unchecked().term, term, "reset to this term");
        node.shutdown().await;
    }
}
