//! IDunno's coordinator: a Raft group (openraft, log and state in sled) that holds all job
//! state, schedules batches onto workers and serves the REST API. The leader *is* the
//! coordinator; followers serve reads and forward writes, so any of them can take over with
//! no backup sync.
//!
//! Layout, bottom up:
//!
//! * [`state`] — the replicated state machine: jobs, batches, models, files, workers, the
//!   statistics derived from them; deterministic, no I/O;
//! * [`raft`] — openraft's storage (sled log and state machine) and HTTP transport, with
//!   the links' quorum record and fault switch;
//! * [`proposer`] — group commit of client writes into log entries;
//! * [`app`] — the context every handler and task holds ([`Coordinator`]);
//! * [`leader`] — the leader's soft state: fair-time scheduler, lease expiry, storage-node
//!   watch, and each node's record of live workers;
//! * [`replicas`] — the SDFS data path: placement, upload, download, repair, gc;
//! * [`online`] — online inference requests (`/v2`) queued and batched on the leader;
//! * [`api`] — the REST API and its middleware ([`auth`], [`forward`] to the leader);
//! * [`membership`], [`metrics`], [`config`], [`error`], [`local`] (a group in one process).
//!
//! [`start`] (this file) brings a coordinator up on a bound listener and spawns its named
//! tasks; [`CoordinatorHandle::shutdown`] takes everything down through one path.

pub(crate) mod api;
pub mod app;
pub(crate) mod auth;
pub(crate) mod capped;
pub mod config;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod leader;
pub mod local;
pub(crate) mod membership;
pub(crate) mod metrics;
pub(crate) mod online;
pub(crate) mod proposer;
pub mod raft;
pub(crate) mod replicas;
pub(crate) mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ServerState};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

pub use app::Coordinator;
pub use config::CoordinatorConfig;

use crate::leader::workers::Workers;
use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::proposer::Proposer;
use crate::raft::links::Links;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{NodeId, Raft};
use crate::replicas::StorageNodeClient;

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
    let tls = config
        .tls
        .load()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let bound = listener.local_addr()?.to_string();
    let addr = config.advertise.clone().unwrap_or_else(|| bound.clone());
    check_open_api(&config, &bound)?;
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
    let metrics = Metrics::default();
    let log = LogStore::open(&db)
        .map_err(|source| StartError::Storage {
            path: db_path.display().to_string(),
            source,
        })?
        .timed(metrics.raft_append.clone());
    let sm = StateMachineStore::open(&db)
        .map_err(|e| StartError::State(e.to_string()))?
        .timed(metrics.raft_apply.clone());
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

    let http = tls
        .transport
        .client_builder()
        .connect_timeout(Duration::from_millis(300))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let links = Arc::new(Links::default());
    let network = Network::new(
        config.id,
        http.clone(),
        tls.transport.scheme(),
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
        nodes: StorageNodeClient::new(
            http.clone(),
            tls.transport.scheme(),
            config.cluster_secret.clone(),
        ),
        repair_wake: Notify::new(),
        links,
        removed: std::sync::atomic::AtomicBool::new(false),
        http,
        scheme: tls.transport.scheme(),
        metrics,
        started: Instant::now(),
        leader: Mutex::new(LeaderState::new(0)),
        workers: Mutex::new(Workers::default()),
        online: crate::online::Online::default(),
        shutdown: shutdown.clone(),
    });

    let mut tasks = Vec::new();
    let app = crate::api::router(coordinator.clone());
    let mut server_stop = shutdown.clone();
    let server_tls = tls.server.clone();
    tasks.push(tokio::spawn(async move {
        let stopped = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = idunno_server::tls::serve(listener, server_tls, app, stopped).await {
            tracing::error!(error = %e, "http server failed");
        }
    }));
    tasks.push(tokio::spawn(watch_leadership(coordinator.clone())));
    tasks.push(tokio::spawn(crate::leader::expiry::expire_leases(
        coordinator.clone(),
    )));
    tasks.push(tokio::spawn(crate::leader::node_watch::watch_nodes(
        coordinator.clone(),
    )));
    tasks.push(tokio::spawn(crate::replicas::repair::repair_loop(
        coordinator.clone(),
    )));
    tasks.push(tokio::spawn(crate::membership::watch_removal(
        coordinator.clone(),
    )));

    if !config.join {
        initialize(&raft, &config).await;
    }
    tracing::info!(id = config.id, %addr, scheme = tls.transport.scheme().as_str(), "coordinator started");
    Ok(CoordinatorHandle {
        coordinator,
        addr: bound,
        stop,
        tasks,
    })
}

/// A client API without a token is for 127.0.0.1 (the demo) or an explicit `--open`; either
/// way it is said at start.
fn check_open_api(config: &CoordinatorConfig, bound: &str) -> Result<(), StartError> {
    if config.token.is_some() {
        return Ok(());
    }
    if !idunno_api::address::is_loopback(bound) && !config.open {
        return Err(StartError::Config(format!(
            "the client API would be open to anyone who reaches {bound}: set --token (or \
             IDUNNO_TOKEN), or pass --open to serve it without one"
        )));
    }
    tracing::warn!(
        listen = %bound,
        "the client API (/v1, /v2) is OPEN: no --token, anyone who reaches this address may \
         submit jobs, read files and change models"
    );
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_client_api_is_for_loopback_or_an_explicit_open() {
        let mut config = CoordinatorConfig::new(1, "unused".into());
        assert!(check_open_api(&config, "127.0.0.1:7001").is_ok());
        let refused = check_open_api(&config, "0.0.0.0:7001").unwrap_err();
        assert!(refused.to_string().contains("--token"), "{refused}");
        assert!(check_open_api(&config, "10.0.0.2:7001").is_err());
        config.open = true;
        assert!(check_open_api(&config, "0.0.0.0:7001").is_ok());
        config.open = false;
        config.token = Some("t".into());
        assert!(check_open_api(&config, "0.0.0.0:7001").is_ok());
    }
}
