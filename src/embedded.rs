//! A whole IDunno cluster inside one process: coordinators, storage nodes and workers, each a
//! real server on its own loopback port with its own data folder, talking HTTP to the others.
//! `idunno up` runs one of each; the system tests run bigger ones and stop, restart or kill
//! their parts. It is not a mock of anything: only the process boundary is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use idunno_api::file::StorageNode;
use idunno_api::{Client, Transport};
use idunno_coordinator::local::LocalGroup;
use idunno_coordinator::{CoordinatorConfig, StartError};
use idunno_sdfs::{NodeConfig, NodeHandle, SdfsError};
use idunno_server::tls::TlsOptions;
use idunno_worker::{WorkerConfig, WorkerError, WorkerHandle};
use tokio::net::TcpListener;

/// What failed while starting or changing an embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("coordinator: {0}")]
    Coordinator(#[from] StartError),
    #[error("storage node: {0}")]
    Storage(#[from] SdfsError),
    #[error("worker: {0}")]
    Worker(#[from] WorkerError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    NotReady(String),
    #[error("TLS: {0}")]
    Tls(#[from] idunno_server::tls::TlsError),
}

/// The shape of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub coordinators: u64,
    pub storage_nodes: usize,
    pub workers: usize,
    /// The first coordinator's address (the others, and every storage node and worker, take
    /// free loopback ports); default: a free port too.
    pub listen: Option<String>,
}

/// A running in-process cluster.
pub struct EmbeddedCluster {
    /// The in-process coordinators (none when the cluster was attached to external ones).
    pub coordinators: LocalGroup,
    /// Coordinators running elsewhere (processes of their own) that this cluster's storage
    /// nodes and workers use instead.
    external: Vec<String>,
    nodes: Vec<(NodeConfig, Option<NodeHandle>)>,
    workers: Vec<(WorkerConfig, Option<WorkerHandle>)>,
    dir: PathBuf,
    /// The coordinators' bearer token, which the storage nodes, workers and client send.
    token: Option<String>,
    /// The coordinators' cluster secret, which the storage nodes and workers send too.
    cluster_secret: Option<String>,
    /// The coordinators' TLS files, which the storage nodes and workers serve with too.
    tls: TlsOptions,
    /// How the client reaches the cluster (TLS trusting its CA when `tls` is set).
    transport: Transport,
}

impl EmbeddedCluster {
    /// Starts `spec` under `dir`; `tweak` adjusts each coordinator's configuration. Returns
    /// once every storage node is registered and alive.
    pub async fn start(
        dir: &Path,
        spec: &ClusterSpec,
        tweak: impl Fn(&mut CoordinatorConfig),
    ) -> Result<EmbeddedCluster, EmbeddedError> {
        // The token, secret and TLS files `tweak` gives the coordinators, for everything else
        // to use.
        let mut probe = CoordinatorConfig::new(1, dir.to_path_buf());
        tweak(&mut probe);
        let token = probe.token;
        let cluster_secret = probe.cluster_secret;
        let transport = probe.tls.load()?.transport;
        let tls = probe.tls;
        let coordinators = match &spec.listen {
            None => LocalGroup::start(spec.coordinators, dir, tweak).await?,
            Some(addr) => {
                let mut listeners = vec![TcpListener::bind(addr).await?];
                for _ in 1..spec.coordinators {
                    listeners.push(TcpListener::bind("127.0.0.1:0").await?);
                }
                LocalGroup::start_on(listeners, dir, tweak).await?
            }
        };
        coordinators
            .wait_for_leader(Duration::from_secs(20))
            .await
            .ok_or_else(|| EmbeddedError::NotReady("no coordinator leader".into()))?;
        let mut cluster = EmbeddedCluster {
            coordinators,
            external: Vec::new(),
            nodes: Vec::new(),
            workers: Vec::new(),
            dir: dir.to_path_buf(),
            token,
            cluster_secret,
            tls,
            transport,
        };
        cluster.start_satellites(spec).await?;
        Ok(cluster)
    }

    /// Starts `spec`'s storage nodes and workers under `dir`, in this process, for the
    /// coordinators at `coordinators` (processes of their own; `spec.coordinators` is
    /// ignored). Returns once every storage node is registered and alive.
    pub async fn attach(
        dir: &Path,
        coordinators: &[String],
        spec: &ClusterSpec,
    ) -> Result<EmbeddedCluster, EmbeddedError> {
        let mut cluster = EmbeddedCluster {
            coordinators: LocalGroup::start(0, dir, |_| {}).await?,
            external: coordinators.to_vec(),
            nodes: Vec::new(),
            workers: Vec::new(),
            dir: dir.to_path_buf(),
            token: None,
            cluster_secret: None,
            tls: TlsOptions::default(),
            transport: Transport::plain(),
        };
        cluster.start_satellites(spec).await?;
        Ok(cluster)
    }

    async fn start_satellites(&mut self, spec: &ClusterSpec) -> Result<(), EmbeddedError> {
        for _ in 0..spec.storage_nodes {
            self.add_storage_node().await?;
        }
        self.wait_for_nodes(spec.storage_nodes).await?;
        for _ in 0..spec.workers {
            self.add_worker(|_| {}).await?;
        }
        Ok(())
    }

    /// The coordinators' addresses.
    pub fn coordinator_addrs(&self) -> Vec<String> {
        if self.external.is_empty() {
            self.coordinators.addrs()
        } else {
            self.external.clone()
        }
    }

    /// How this cluster's clients reach it (plain, or TLS trusting its CA).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// A client of the coordinators.
    pub fn client(&self) -> Client {
        Client::with_transport(
            &self.coordinator_addrs(),
            self.token.clone(),
            &self.transport,
        )
        .expect("the group has addresses")
    }

    /// Starts one more storage node (`s<n>`); returns its index.
    pub async fn add_storage_node(&mut self) -> Result<usize, EmbeddedError> {
        let index = self.nodes.len();
        let id = format!("s{}", index + 1);
        let mut config = NodeConfig::new(id.clone(), self.dir.join(&id));
        config.coordinators = self.coordinator_addrs();
        config.token = self.token.clone();
        config.cluster_secret = self.cluster_secret.clone();
        config.tls = self.tls.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        config.listen = listener.local_addr()?.to_string();
        let handle = idunno_sdfs::start(config.clone(), listener).await?;
        self.nodes.push((config, Some(handle)));
        Ok(index)
    }

    /// Waits until `n` storage nodes are registered and alive in the namespace.
    pub async fn wait_for_nodes(&self, n: usize) -> Result<(), EmbeddedError> {
        let client = self.client();
        let started = Instant::now();
        loop {
            if let Ok(nodes) = client.get::<Vec<StorageNode>>("/v1/nodes").await {
                if nodes.iter().filter(|n| n.alive).count() >= n {
                    return Ok(());
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err(EmbeddedError::NotReady(format!(
                    "{n} storage nodes never came up"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Storage node `index`'s id.
    pub fn node_id(&self, index: usize) -> String {
        self.nodes[index].0.id.clone()
    }

    /// Storage node `index`'s address.
    pub fn node_addr(&self, index: usize) -> String {
        self.nodes[index].0.listen.clone()
    }

    /// Storage node `index`'s data folder.
    pub fn node_data(&self, index: usize) -> PathBuf {
        self.nodes[index].0.data.clone()
    }

    /// The running storage node `index`.
    pub fn node(&self, index: usize) -> Option<&NodeHandle> {
        self.nodes.get(index)?.1.as_ref()
    }

    /// Stops storage node `index` (its data stays), as a crash would from the outside.
    pub async fn stop_node(&mut self, index: usize) -> Result<(), EmbeddedError> {
        if let Some(handle) = self.nodes[index].1.take() {
            handle.shutdown().await?;
        }
        Ok(())
    }

    /// Kills storage nodes `indexes` at the same moment, as a crash would: no drain, no flush,
    /// transfers in progress cut off (their data stays). `restart_node` brings one back.
    pub async fn kill_nodes(&mut self, indexes: &[usize]) -> Result<(), EmbeddedError> {
        let handles: Vec<NodeHandle> = indexes
            .iter()
            .filter_map(|&i| self.nodes.get_mut(i).and_then(|n| n.1.take()))
            .collect();
        for result in futures::future::join_all(handles.into_iter().map(NodeHandle::kill)).await {
            result?;
        }
        Ok(())
    }

    /// Starts storage node `index` again on its address and data folder.
    pub async fn restart_node(&mut self, index: usize) -> Result<(), EmbeddedError> {
        self.stop_node(index).await?;
        let config = self.nodes[index].0.clone();
        let listener = TcpListener::bind(&config.listen).await?;
        self.nodes[index].1 = Some(idunno_sdfs::start(config, listener).await?);
        Ok(())
    }

    /// Starts one more worker (its configuration adjusted by `tweak`); returns its index.
    pub async fn add_worker(
        &mut self,
        tweak: impl Fn(&mut WorkerConfig),
    ) -> Result<usize, EmbeddedError> {
        let index = self.workers.len();
        let mut config = WorkerConfig::new(
            self.coordinator_addrs(),
            self.dir.join(format!("w{}", index + 1)),
        );
        config.name = Some(format!("worker-{}", index + 1));
        config.batch_wait_ms = 2_000;
        config.token = self.token.clone();
        config.cluster_secret = self.cluster_secret.clone();
        config.tls = self.tls.clone();
        tweak(&mut config);
        let handle = idunno_worker::start(config.clone()).await?;
        self.workers.push((config, Some(handle)));
        Ok(index)
    }

    /// The running worker `index`.
    pub fn worker(&self, index: usize) -> Option<&WorkerHandle> {
        self.workers.get(index)?.1.as_ref()
    }

    /// Stops worker `index` gracefully (finishes its batch, gives back the rest).
    pub async fn stop_worker(&mut self, index: usize) {
        if let Some(handle) = self.workers[index].1.take() {
            if let Err(e) = handle.stop().await {
                tracing::warn!(error = %e, "worker stopped with an error");
            }
        }
    }

    /// Kills worker `index`: its tasks end at once, nothing is given back (a crash).
    pub async fn kill_worker(&mut self, index: usize) {
        if let Some(handle) = self.workers[index].1.take() {
            handle.kill().await;
        }
    }

    /// Stops everything: workers, storage nodes, then coordinators.
    pub async fn shutdown(mut self) {
        for i in 0..self.workers.len() {
            self.stop_worker(i).await;
        }
        for i in 0..self.nodes.len() {
            let _ = self.stop_node(i).await;
        }
        self.coordinators.shutdown().await;
    }
}
