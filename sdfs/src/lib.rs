//! IDunno's SDFS storage node: a process that keeps immutable, content-addressed blobs (named
//! by their BLAKE3) in sled and serves them to coordinators and workers over HTTP. The file
//! *namespace* — names, versions, which node holds which blob — is not here: it lives in the
//! coordinators' Raft state, and the coordinators drive uploads, deletions and repairs.
//!
//! Layers, bottom up: [`chunk`], [`meta`] and [`content`] (what is on disk), [`blob_store`]
//! with [`upload`] and [`blob_read`] (the store; blocking), [`transfer`] (async streaming in
//! and out of the store), [`routes`] and [`fetch`] (HTTP), [`heartbeat`] (registration with
//! the coordinators), [`node`] (the context every handler and task holds).
//!
//! [`start`] (this file) brings a node up on a bound listener; [`NodeHandle::shutdown`] takes
//! everything down through one path and closes the store; [`run`] is the `idunno sdfs-node`
//! entry point, stopped by the shutdown future the binary passes.

mod auth;
mod blob_read;
mod blob_store;
pub mod chunk;
mod config;
mod content;
mod error;
mod fetch;
mod hash;
mod heartbeat;
mod meta;
mod metrics;
mod node;
mod routes;
mod sled_lock;
mod transfer;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use idunno_api::storage_node::StorageNodeClient;
use idunno_api::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use blob_read::BlobRead;
/// Test hooks (simulated bit rot), for the tests of this and other crates: behind the
/// `test-util` feature, never in a release build of the binary.
#[cfg(any(test, feature = "test-util"))]
pub use blob_store::{corrupt_byte_for_tests, forge_byte_for_tests};
pub use blob_store::{BlobStore, Deleted, StoreOptions, Totals};
pub use config::NodeConfig;
pub use error::SdfsError;
pub use hash::BlobHash;
pub use idunno_api::range::ByteRange;
pub use node::Node;
pub use upload::{SealedUpload, Upload};

use crate::metrics::Metrics;
use crate::transfer::blocking;

/// How long shutdown waits for requests in progress (a client reading a large blob) before
/// giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running node.
pub struct NodeHandle {
    /// The bound address (`127.0.0.1:port`).
    pub addr: String,
    node: Arc<Node>,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    heartbeat: Option<JoinHandle<()>>,
}

impl NodeHandle {
    /// The node's shared state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The node's blob store (for tests and embedding).
    pub fn store(&self) -> &BlobStore {
        &self.node.store
    }

    /// Stops serving (requests in progress get up to 10 s), stops heartbeating, flushes and
    /// closes the store. When it returns `Ok`, the data folder can be opened again.
    pub async fn shutdown(self) -> Result<(), SdfsError> {
        let NodeHandle {
            node,
            stop,
            mut server,
            heartbeat,
            ..
        } = self;
        let _ = stop.send(true);
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; closing anyway");
            server.abort();
        }
        if let Some(task) = heartbeat {
            let _ = task.await;
        }
        let store = node.store.clone();
        drop(node);
        blocking(move || store.close()).await?;
        tracing::info!("storage node stopped");
        Ok(())
    }
}

impl NodeHandle {
    /// Stops the node the way a crash would from the outside, for failure tests: nothing is
    /// drained or flushed; the server and heartbeat tasks are cancelled at once and every
    /// transfer in progress breaks off (bytes not yet acknowledged are lost, as in a crash).
    /// The data folder can be opened again once it returns.
    pub async fn kill(self) -> Result<(), SdfsError> {
        let NodeHandle {
            node,
            stop,
            server,
            heartbeat,
            ..
        } = self;
        // Connections already accepted run in their own tasks: the signal cuts them off.
        let _ = stop.send(true);
        server.abort();
        let _ = server.await;
        if let Some(task) = heartbeat {
            task.abort();
            let _ = task.await;
        }
        let lock_file = node.store.inner.db_path.join("db");
        drop(node);
        // Whatever still holds the store (a request being cut off) lets go shortly.
        blocking(move || crate::sled_lock::wait_until_unlocked(&lock_file, KILL_RELEASE)).await?;
        tracing::info!("storage node killed");
        Ok(())
    }
}

/// How long [`NodeHandle::kill`] waits for the last users of a killed node's store.
const KILL_RELEASE: Duration = Duration::from_secs(10);

/// Starts a node serving on `listener`: opens the store, serves, and (if coordinators are
/// configured) registers and heartbeats in the background.
pub async fn start(config: NodeConfig, listener: TcpListener) -> Result<NodeHandle, SdfsError> {
    config.validate().map_err(SdfsError::Config)?;
    let bound = listener.local_addr()?.to_string();
    let addr = config.advertise.clone().unwrap_or_else(|| bound.clone());
    let coordinators = config.coordinator_list();
    let tls = config
        .tls
        .load()
        .map_err(|e| SdfsError::Config(e.to_string()))?;
    let client = if coordinators.is_empty() {
        None
    } else {
        Some(
            Client::with_transport(&coordinators, config.token.clone(), &tls.transport)
                .map_err(|e| SdfsError::Config(e.to_string()))?,
        )
    };

    let (data, options) = (config.data.clone(), config.store_options());
    let store = blocking(move || {
        std::fs::create_dir_all(&data)?;
        BlobStore::open_with(&data, options)
    })
    .await?;
    let http = tls
        .transport
        .client_builder()
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| SdfsError::Internal(format!("http client: {e}")))?;

    let secret = config.cluster_secret.clone();
    let (stop, shutdown) = watch::channel(false);
    let node = Arc::new(Node {
        config,
        addr,
        store,
        peers: StorageNodeClient::new(http, tls.transport.scheme(), secret),
        metrics: Metrics::default(),
        shutdown: shutdown.clone(),
    });

    let app = crate::routes::router(node.clone());
    let mut server_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = server_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = idunno_server::tls::serve(listener, tls.server, app, stopped).await {
            tracing::error!(error = %e, "http server failed");
        }
    });
    let heartbeat = match client {
        Some(client) => Some(tokio::spawn(crate::heartbeat::run(node.clone(), client))),
        None => {
            tracing::info!("no coordinators configured: serving without registering");
            None
        }
    };
    let totals = node.store.totals();
    tracing::info!(
        id = %node.config.id,
        addr = %node.addr,
        blobs = totals.blobs,
        bytes = totals.bytes,
        "storage node started"
    );
    Ok(NodeHandle {
        addr: bound,
        node,
        stop,
        server,
        heartbeat,
    })
}

/// Binds `--listen`, starts the node and runs it until `shutdown` resolves (the binary
/// passes SIGINT/SIGTERM), then stops it.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SdfsError> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| SdfsError::Config(format!("cannot listen on {}: {e}", config.listen)))?;
    let handle = start(config, listener).await?;
    shutdown.await;
    tracing::info!("shutting down");
    handle.shutdown().await
}
