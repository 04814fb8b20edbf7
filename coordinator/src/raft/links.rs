//! The links between this coordinator and its peers: when each peer last answered an append
//! (so a leader can tell it has lost its quorum and stop acting as one), and a fault-injection
//! switch that cuts links, for partition tests and chaos drills.
//!
//! A cut link fails both ways at this node: calls to the peer fail as unreachable before they
//! are sent, and calls from it (every coordinator-to-coordinator request carries its sender's
//! id in [`NODE_HEADER`](idunno_api::headers::NODE_HEADER)) are refused with 503. Cutting a node off from the others therefore
//! needs the switch of that one node only. Nothing here is persistent or replicated.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use super::NodeId;

/// This node's view of its links.
#[derive(Debug, Default)]
pub struct Links {
    cut: RwLock<BTreeSet<NodeId>>,
    acked: Mutex<HashMap<NodeId, Instant>>,
}

impl Links {
    /// Cuts the links to and from `peers` (fault injection).
    pub fn cut(&self, peers: impl IntoIterator<Item = NodeId>) {
        self.cut
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(peers);
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.cut.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Whether the link to `peer` is cut.
    pub fn is_cut(&self, peer: NodeId) -> bool {
        self.cut
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&peer)
    }

    /// Whether a request whose [`NODE_HEADER`](idunno_api::headers::NODE_HEADER) says `sender` must be refused.
    pub fn refuses(&self, sender: Option<&str>) -> bool {
        sender
            .and_then(|s| s.parse::<NodeId>().ok())
            .is_some_and(|id| self.is_cut(id))
    }

    /// Records that `peer` answered an append (accepted or not: it is reachable).
    pub fn acked(&self, peer: NodeId) {
        self.acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }

    /// Whether, counting this node itself, a majority of `voters` answered within `window`.
    pub fn quorum_within(&self, me: NodeId, voters: &BTreeSet<NodeId>, window: Duration) -> bool {
        let acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = voters
            .iter()
            .filter(|v| {
                **v == me
                    || acked
                        .get(v)
                        .is_some_and(|at| at.elapsed() <= window && !self.is_cut(**v))
            })
            .count();
        fresh * 2 > voters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_needs_fresh_answers_from_a_majority() {
        let links = Links::default();
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let window = Duration::from_secs(60);
        assert!(!links.quorum_within(1, &voters, window));
        links.acked(2);
        assert!(links.quorum_within(1, &voters, window));
        assert!(links.quorum_within(1, &[1].into(), window));
        // A cut link does not count, whenever it last answered.
        links.cut([2]);
        assert!(!links.quorum_within(1, &voters, window));
        assert!(links.refuses(Some("2")));
        assert!(!links.refuses(Some("3")) && !links.refuses(None) && !links.refuses(Some("x")));
        links.heal();
        assert!(links.quorum_within(1, &voters, window));
        assert!(!links.quorum_within(1, &voters, Duration::ZERO));
    }
}
