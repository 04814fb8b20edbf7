//! One coordinator process: its Raft node, its shared view of the state, the leader's soft
//! state, and the HTTP server in front of them. [`start`] brings it up on a bound listener;
//! [`CoordinatorHandle::shutdown`] takes everything down through one path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ServerState};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::CoordinatorConfig;
use crate::error::ApiError;
use crate::files::monitor::StorageMonitor;
use crate::files::node_client::NodeClient;
use crate::metrics::Metrics;
use crate::proposer::{ProposeError, Proposer};
use crate::raft::links::Links;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::{SharedState, StateMachineStore};
use crate::raft::{NodeId, Raft};
use crate::scheduler::FairShare;
use crate::state::command::{Command, Response};
use crate::workers::Workers;

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
        let now = Instant::now();
        LeaderState {
            term,
            since: now,
            fair: FairShare::new(),
            storage: StorageMonitor::default(),
        }
    }
}

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
    /// For storage nodes' internal routes.
    pub nodes: NodeClient,
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
    leader: Mutex<LeaderState>,
    /// The workers this node hears from (they heartbeat every coordinator): its own record,
    /// kept across leadership changes, so a new leader already knows who went silent.
    workers: Mutex<Workers>,
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
        match self.proposer.propose(request_id, cmd).await {
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
        let index = crate::raft::routes::fetch_read_index(self, &leader_addr).await?;
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

/// A running coordinator.
pub struct CoordinatorHandle {
    pub coordinator: Arc<Coordinator>,
    /// The bound address (`127.0.0.1:port`).
    pub addr: String,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl CoordinatorHandle {
    pub fn raft(&self) -> &Raft {
        &self.coordinator.raft
    }

    /// Stops serving, stops Raft and waits for every task, so the data folder can be reopened.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.coordinator.raft.shutdown().await;
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Errors that stop a coordinator from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the data folder {path}: {source}")]
    Storage { path: String, source: sled::Error },
    #[error("cannot load the stored state: {0}")]
    State(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts a coordinator serving on `listener`.
pub async fn start(
    mut config: CoordinatorConfig,
    listener: TcpListener,
) -> Result<CoordinatorHandle, StartError> {
    config.validate().map_err(StartError::Config)?;
    let bound = listener.local_addr()?.to_string();
    let addr = config.advertise.clone().unwrap_or_else(|| bound.clone());
    if config.peers.is_empty() && !config.join {
        config.peers = vec![(config.id, addr.clone())];
    }
    std::fs::create_dir_all(&config.data)?;
    let db_path = config.data.join("raft");
    let db = sled::Config::new()
        .path(&db_path)
        .cache_capacity(256 << 20)
        // Every log append flushes; a timer flush on top would only add work.
        .flush_every_ms(None)
        .open()
        .map_err(|source| StartError::Storage {
            path: db_path.display().to_string(),
            source,
        })?;
    let log = LogStore::open(&db).map_err(|source| StartError::Storage {
        path: db_path.display().to_string(),
        source,
    })?;
    let sm = StateMachineStore::open(&db).map_err(|e| StartError::State(e.to_string()))?;
    let shared = sm.shared();
    drop(db);

    let raft_config = openraft::Config {
        cluster_name: "idunno".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_min_ms,
        election_timeout_max: config.election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: config.keep_logs,
        install_snapshot_timeout: 2000,
        // openraft waits one heartbeat interval for an append: keep them small. (The
        // network also splits appends by bytes and lets a large entry finish delivering.)
        max_payload_entries: 64,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Config(e.to_string()))?;

    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(300))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let links = Arc::new(Links::default());
    let network = Network::new(
        config.id,
        http.clone(),
        config.cluster_secret.clone(),
        config.raft_body_limit,
        links.clone(),
    );
    let raft = Raft::new(config.id, Arc::new(raft_config), network, log.clone(), sm)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

    let (stop, shutdown) = watch::channel(false);
    let coordinator = Arc::new(Coordinator {
        id: config.id,
        addr: addr.clone(),
        proposer: Proposer::spawn(raft.clone()),
        config: config.clone(),
        raft: raft.clone(),
        shared,
        log,
        nodes: NodeClient::new(http.clone(), config.cluster_secret.clone()),
        repair_wake: Notify::new(),
        links,
        removed: std::sync::atomic::AtomicBool::new(false),
        http,
        metrics: Metrics::default(),
        started: Instant::now(),
        leader: Mutex::new(LeaderState::new(0)),
        workers: Mutex::new(Workers::default()),
        shutdown: shutdown.clone(),
    });

    let mut tasks = Vec::new();
    let app = crate::api::router(coordinator.clone());
    let mut server_stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = server_stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "http server failed");
        }
    }));
    tasks.push(tokio::spawn(watch_leadership(coordinator.clone())));
    tasks.push(tokio::spawn(crate::lease::expire_leases(
        coordinator.clone(),
    )));
    tasks.push(tokio::spawn(crate::files::monitor::watch_nodes(
        coordinator.clone(),
    )));
    tasks.push(tokio::spawn(crate::files::repair::repair_loop(
        coordinator.clone(),
    )));
    tasks.push(tokio::spawn(crate::membership::watch_removal(
        coordinator.clone(),
    )));

    if !config.join {
        initialize(&raft, &config).await;
    }
    tracing::info!(id = config.id, %addr, "coordinator started");
    Ok(CoordinatorHandle {
        coordinator,
        addr: bound,
        stop,
        tasks,
    })
}

/// Initialises the cluster with the configured voters if this node has never been part of one.
/// Every node of a fresh cluster does this with the same list, which openraft makes safe.
async fn initialize(raft: &Raft, config: &CoordinatorConfig) {
    match raft.is_initialized().await {
        Ok(true) => tracing::info!("rejoining an existing cluster"),
        Ok(false) => {
            let members: BTreeMap<NodeId, BasicNode> = config
                .peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(voters = config.peers.len(), "cluster initialised"),
                Err(e) => tracing::info!(error = %e, "not initialising"),
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot tell whether the cluster is initialised"),
    }
}

/// Resets the leader's soft state each time this node wins an election (so that the grace
/// period starts then, even if no request touches the state before its first expiry scan).
async fn watch_leadership(coordinator: Arc<Coordinator>) {
    let mut metrics = coordinator.raft.metrics();
    let mut shutdown = coordinator.shutdown.clone();
    loop {
        let leading = metrics.borrow_and_update().state == ServerState::Leader;
        if leading {
            // Resets it if it belongs to an earlier term.
            drop(coordinator.leader_state());
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
