//! Cluster status bodies: who leads, who is a member, how far behind each one is.

use serde::{Deserialize, Serialize};

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering coordinator.
    pub node_id: u64,
    pub addr: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub members: Vec<Member>,
}

/// A Raft member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    /// Voter, or learner (receives the log, does not vote).
    pub voter: bool,
    /// Highest log index known replicated to it (the leader's view, which a follower asks the
    /// leader for; `None` if no leader answered).
    pub matched_index: Option<u64>,
    /// Entries it is behind the leader's log (the leader's view, as `matched_index`).
    pub lag: Option<u64>,
}

/// `POST /v1/cluster/members`: add a coordinator (as a learner, then as a voter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub id: u64,
    pub addr: String,
    /// Add as a voter once it has caught up (default true); false keeps it a learner.
    #[serde(default = "yes")]
    pub voter: bool,
}

fn yes() -> bool {
    true
}
