//! The coordinator's context: [`Coordinator`], what every request handler and background task
//! of one coordinator holds — its Raft handle and the applied state, the proposer, its links
//! to peers, the leader's soft state, the workers it hears from — and what they ask of it
//! (lead? write, read linearizably). Starting and stopping it is `lib.rs`'s business.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use idunno_api::headers::{NODE_HEADER, SECRET_HEADER};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use tokio::sync::{watch, Notify};

use crate::config::CoordinatorConfig;
use crate::error::ApiError;
use crate::leader::workers::Workers;
pub(crate) use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::proposer::{ProposeError, Proposer};
use crate::raft::links::Links;
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::SharedState;
use crate::raft::{Node, NodeId, Raft};
use crate::state::command::{Command, Response};
use idunno_api::storage_node::StorageNodeClient;
use idunno_api::Scheme;

/// Everything a request handler or a background task of this coordinator needs.
pub struct Coordinator {
    pub id: NodeId,
    /// The address peers and clients reach this node at.
    pub addr: String,
    pub config: CoordinatorConfig,
    pub raft: Raft,
    pub shared: Arc<SharedState>,
    pub log: LogStore,
    pub proposer: Proposer,
    /// For forwarding to the leader and talking to peers.
    pub http: reqwest::Client,
    /// `http` or `https`: how peers' and storage nodes' bare addresses are reached.
    pub scheme: Scheme,
    /// For storage nodes' internal routes.
    pub nodes: StorageNodeClient,
    /// Wakes the repair loop (a node died or came back, a copy was lost).
    pub repair_wake: Notify,
    /// When each peer last answered this node's appends, and links cut by fault injection.
    pub links: Arc<Links>,
    /// A member with a leader said this node is no longer in the group.
    pub removed: std::sync::atomic::AtomicBool,
    pub metrics: Metrics,
    /// When this process started: a worker it has never heard from is given a few heartbeat
    /// intervals from here before it counts as dead.
    pub started: Instant,
    pub(crate) leader: Mutex<LeaderState>,
    /// The workers this node hears from (they heartbeat every coordinator): its own record,
    /// kept across leadership changes, so a new leader already knows who went silent.
    pub(crate) workers: Mutex<Workers>,
    /// Online inference requests held while this node leads ([`crate::online`]); lock
    /// order: after the workers.
    pub(crate) online: crate::online::Online,
    /// Flips to true once when the node shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl Coordinator {
    /// The leader's soft state (meaningful only while this node leads), for the term it leads
    /// in now: if the state still belongs to an earlier term (this node leads again and
    /// [`watch_leadership`] has not caught up yet), it is reset first, so that nothing acts on
    /// an old term's takeover time or heartbeat times, such as expiring live workers' leases.
    pub fn leader_state(&self) -> MutexGuard<'_, LeaderState> {
        let (leading, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        let mut state = self.leader_state_unchecked();
        if leading && state.term != term {
            tracing::info!(term, "became leader");
            *state = LeaderState::new(term);
        }
        state
    }

    /// The soft state as it is, whatever term it belongs to.
    pub(crate) fn leader_state_unchecked(&self) -> MutexGuard<'_, LeaderState> {
        self.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The workers this node hears from. Lock order everywhere: the shared state, then the
    /// leader's soft state, then this.
    pub fn workers(&self) -> MutexGuard<'_, Workers> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if this node leads and can reach a quorum: a leader that has not heard from a
    /// majority of the voters for [`Coordinator::step_down_after`] (once it has led that long)
    /// is cut off — the others are electing or have elected another — and acts as no leader:
    /// it schedules nothing, expires nothing, and refuses writes, which could not commit.
    pub fn is_leader(&self) -> bool {
        self.raft_says_leader() && !self.isolated()
    }

    /// Whether openraft has this node as the leader (whatever its quorum).
    fn raft_says_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// How long a leader may go without a quorum's answer before it stops acting as one: two
    /// election timeouts (by then the others have campaigned).
    pub fn step_down_after(&self) -> Duration {
        Duration::from_millis(self.config.election_max_ms * 2)
    }

    /// A leader (per openraft) that has led for a while and heard from no quorum lately.
    pub fn isolated(&self) -> bool {
        if !self.raft_says_leader() {
            return false;
        }
        let window = self.step_down_after();
        // This term's takeover (the soft state is reset first if it is an older term's).
        if self.leader_state().since.elapsed() < window {
            return false;
        }
        let voters: std::collections::BTreeSet<NodeId> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        !self.links.quorum_within(self.id, &voters, window)
    }

    /// The leader this node knows of: id and address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    /// Waits up to `timeout` for a leader to be known.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, String)> {
        if let Some(l) = self.leader() {
            return Some(l);
        }
        let _ = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
        self.leader()
    }

    /// Commits a command through the leader's proposer; refusals become API errors.
    pub async fn write(&self, request_id: String, cmd: Command) -> Result<Response, ApiError> {
        if self.isolated() {
            return Err(ApiError::NoLeader(format!(
                "node {} has not heard from a majority of the coordinators for {} ms; retry \
                 another coordinator",
                self.id,
                self.step_down_after().as_millis()
            )));
        }
        let started = Instant::now();
        let proposed = self.proposer.propose(request_id, cmd).await;
        self.metrics
            .raft_write
            .observe(started.elapsed().as_secs_f64());
        match proposed {
            Ok(Response::Failed(e)) => Err(e.into()),
            Ok(r) => Ok(r),
            Err(ProposeError::NotLeader { leader }) => Err(ApiError::NoLeader(match leader {
                Some((id, addr)) => format!("leadership moved to node {id} at {addr}; retry"),
                None => "an election is running; retry".into(),
            })),
            Err(ProposeError::Stopped(e)) => Err(ApiError::Unavailable(e)),
        }
    }

    /// Makes a following read linearizable: on the leader, confirms leadership with a quorum;
    /// on a follower, asks the leader for its read index and waits until it is applied here.
    /// `stale` skips all of it and reads the local copy.
    pub async fn read_barrier(&self, stale: bool) -> Result<(), ApiError> {
        if stale {
            return Ok(());
        }
        if self.isolated() {
            return Err(ApiError::NoLeader(
                "this node has lost contact with a majority of the coordinators".into(),
            ));
        }
        if self.is_leader() {
            return self
                .raft
                .ensure_linearizable()
                .await
                .map(|_| ())
                .map_err(|e| ApiError::NoLeader(e.to_string()));
        }
        let timeout = Duration::from_millis(self.config.election_max_ms * 4);
        let (_, leader_addr) = self
            .wait_for_leader(timeout)
            .await
            .ok_or_else(|| ApiError::NoLeader("no leader to confirm a linearizable read".into()))?;
        let index = fetch_read_index(self, &leader_addr).await?;
        if let Some(index) = index {
            self.raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "read index")
                .await
                .map_err(|e| ApiError::Unavailable(format!("could not catch up: {e}")))?;
        }
        Ok(())
    }

    /// The Raft members' addresses by id.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }
}

/// Asks the leader at `leader_addr` for its read index.
async fn fetch_read_index(c: &Coordinator, leader_addr: &str) -> Result<Option<u64>, ApiError> {
    let url = format!("{}/raft/read-index", c.scheme.base_url(leader_addr));
    if c.leader().is_some_and(|(id, _)| c.links.is_cut(id)) {
        return Err(ApiError::NoLeader("the link to the leader is cut".into()));
    }
    let mut req = c
        .http
        .post(&url)
        .header(NODE_HEADER, c.id.to_string())
        .timeout(std::time::Duration::from_millis(
            c.config.election_max_ms * 4,
        ));
    if let Some(secret) = &c.config.cluster_secret {
        req = req.header(SECRET_HEADER, secret);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::NoLeader(format!("leader unreachable for a read index: {e}")))?;
    let answer: Result<
        crate::raft::ReadIndex,
        RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>,
    > = resp
        .json()
        .await
        .map_err(|e| ApiError::NoLeader(format!("bad read-index answer: {e}")))?;
    answer
        .map(|r| r.index)
        .map_err(|e| ApiError::NoLeader(format!("leader could not confirm a read: {e}")))
}
