//! What only the leader knows — soft state, rebuilt when a node becomes leader and never
//! replicated: the fair-time scheduler's tags ([`scheduler`]), what it knows of storage nodes
//! ([`storage`]) and the loop that watches them ([`node_watch`]), and the loop that expires the leases of silent workers ([`expiry`]). Which
//! workers are alive is every node's own record ([`workers`]), kept here beside them.

pub mod expiry;
pub mod node_watch;
pub mod scheduler;
pub mod storage;
pub mod workers;

use std::time::Instant;

use scheduler::FairShare;
use storage::StorageMonitor;

/// What only the current leader knows; reset whenever this node becomes leader.
#[derive(Debug)]
pub struct LeaderState {
    /// The term this soft state belongs to.
    pub term: u64,
    /// When this node became leader.
    pub since: Instant,
    pub fair: FairShare,
    pub storage: StorageMonitor,
}

impl LeaderState {
    pub(crate) fn new(term: u64) -> LeaderState {
        LeaderState {
            term,
            since: Instant::now(),
            fair: FairShare::new(),
            storage: StorageMonitor::default(),
        }
    }
}
