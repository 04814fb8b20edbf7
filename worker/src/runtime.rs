//! The worker process: registration, its named tasks, and its one shutdown path.
//!
//! [`start`] registers with the coordinators and spawns:
//! * `heartbeat` — signs of life and background model loads ([`crate::heartbeat`]);
//! * `prefetch` — long-polls leases, fetches and decodes inputs ([`crate::prefetch`]);
//! * `compute` × capacity — runs prepared batches ([`crate::compute`]);
//! * `reporter` — writes results and reports completions ([`crate::results`]).
//!
//! [`WorkerHandle::stop`] is the graceful path (SIGTERM): stop leasing, finish the batch in
//! hand, give back the prepared one, publish what was computed, deregister.
//! [`WorkerHandle::kill`] aborts everything at once, as a crash would. The worker keeps no
//! state that a restart would need.

use std::sync::Arc;
use std::time::Duration;

use idunno_api::worker::{WorkerRegistered, WorkerRegistration};
use idunno_api::Client;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::compute::compute_loop;
use crate::config::WorkerConfig;
use crate::coordinator::encode_segment;
use crate::error::WorkerError;
use crate::heartbeat::heartbeat_loop;
use crate::inputs::InputFetcher;
use crate::lanes::Lanes;
use crate::metrics::Metrics;
use crate::model_cache::ModelCache;
use crate::pool::ComputePool;
use crate::prefetch::prefetch_loop;
use crate::queue::{Holding, PreparedQueue};
use crate::release::release;
use crate::results::{report_loop, Finished};
pub use crate::shared::WorkerStats;
use crate::shared::{Shared, Stats};

/// Computed batches that may wait for the reporter before compute waits for it.
const REPORT_QUEUE: usize = 4;

/// Shortest heartbeat interval the worker will use, whatever the coordinator says.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// A running worker.
///
/// End it with [`WorkerHandle::stop`] (graceful) or [`WorkerHandle::kill`] (a crash).
/// Dropping the handle aborts the worker's tasks like `kill`, without waiting for them.
pub struct WorkerHandle {
    // Declared before `stop_tx`: on drop the tasks are aborted before the stop channel
    // closes (a closed channel reads as "stop", which would start a graceful stop).
    tasks: Tasks,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    listen_addr: std::net::SocketAddr,
}

/// The worker's named tasks; whatever is still here when it drops is aborted.
#[derive(Default)]
struct Tasks {
    heartbeat: Option<JoinHandle<()>>,
    prefetch: Option<JoinHandle<()>>,
    compute: Vec<JoinHandle<()>>,
    reporter: Option<JoinHandle<()>>,
    /// The worker's own listener (`/healthz`, `/readyz`, `/metrics`).
    http: Option<JoinHandle<()>>,
}

impl Tasks {
    /// Every task left, to abort or await.
    fn take_all(&mut self) -> Vec<JoinHandle<()>> {
        let mut all: Vec<JoinHandle<()>> = [
            self.prefetch.take(),
            self.reporter.take(),
            self.heartbeat.take(),
            self.http.take(),
        ]
        .into_iter()
        .flatten()
        .collect();
        all.append(&mut self.compute);
        all
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.take_all() {
            task.abort();
        }
    }
}

/// Waits for a task to end (a task that panicked or was aborted has ended too).
async fn join(task: Option<JoinHandle<()>>) {
    if let Some(task) = task {
        let _ = task.await;
    }
}

/// Registers with the coordinators and starts the worker's tasks. Fails if the
/// configuration is invalid or no coordinator accepts the registration within the client's
/// retry deadline.
pub async fn start(config: WorkerConfig) -> Result<WorkerHandle, WorkerError> {
    config.validate()?;
    let tls = config
        .tls
        .load()
        .map_err(|e| WorkerError::Config(e.to_string()))?;
    let client = Client::with_transport(&config.coordinators, config.token.clone(), &tls.transport)
        .map_err(|e| WorkerError::Config(e.to_string()))?;
    let pool = ComputePool::new(config.compute_threads())?;
    let registration = WorkerRegistration {
        name: config.display_name(),
        capacity: config.capacity,
        accepts: config.models.accepts(),
        loaded: Vec::new(),
    };
    let registered: WorkerRegistered = client
        .post("/v1/workers/register", &registration)
        .await
        .map_err(|e| WorkerError::coordinator("POST /v1/workers/register", e))?;
    let heartbeat_interval = heartbeat_interval(&registered);
    tracing::info!(
        worker = %registered.worker_id,
        name = %registration.name,
        models = %config.models,
        threads = pool.threads(),
        heartbeat_ms = heartbeat_interval.as_millis() as u64,
        "worker registered"
    );

    let (stop_tx, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        inputs: InputFetcher::new(
            client.http().clone(),
            client.scheme(),
            config.cluster_secret.clone(),
        ),
        models: ModelCache::new(client.clone(), config.cache.clone(), pool.clone()),
        worker_id: registered.worker_id,
        client,
        lanes: Lanes::new(pool.threads(), config.capacity as usize),
        pool,
        queue: PreparedQueue::default(),
        holding: Holding::default(),
        stats: Stats::default(),
        stop,
        heartbeat_interval,
        metrics: Metrics::default(),
        config,
    });
    let http_listener = TcpListener::bind(&shared.config.listen)
        .await
        .map_err(|e| {
            WorkerError::Config(format!("cannot listen on {}: {e}", shared.config.listen))
        })?;
    let listen_addr = http_listener.local_addr().map_err(|e| {
        WorkerError::Config(format!("cannot listen on {}: {e}", shared.config.listen))
    })?;
    tracing::info!(
        addr = %listen_addr,
        scheme = tls.transport.scheme().as_str(),
        "serving /healthz, /readyz, /metrics"
    );
    let app = crate::listener::router(shared.clone());
    let http = tokio::spawn(async move {
        let serve =
            idunno_server::tls::serve(http_listener, tls.server, app, std::future::pending());
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "the worker's HTTP listener failed");
        }
    });

    let (report_tx, report_rx) = mpsc::channel::<Finished>(REPORT_QUEUE);
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
    let reporter = tokio::spawn(report_loop(shared.clone(), report_rx));
    let compute = (0..shared.lanes.slots())
        .map(|_| tokio::spawn(compute_loop(shared.clone(), report_tx.clone())))
        .collect();
    drop(report_tx);
    let prefetch = tokio::spawn(prefetch_loop(shared.clone()));
    Ok(WorkerHandle {
        tasks: Tasks {
            heartbeat: Some(heartbeat),
            prefetch: Some(prefetch),
            compute,
            reporter: Some(reporter),
            http: Some(http),
        },
        shared,
        stop_tx,
        listen_addr,
    })
}

/// The heartbeat period: the coordinator's, at least three per lease timeout, at least 10 ms.
fn heartbeat_interval(registered: &WorkerRegistered) -> Duration {
    let mut interval = Duration::from_millis(registered.heartbeat_interval_ms);
    if registered.lease_timeout_ms > 0 {
        interval = interval.min(Duration::from_millis(registered.lease_timeout_ms / 3));
    }
    interval.max(MIN_HEARTBEAT)
}

impl WorkerHandle {
    /// The id the coordinator assigned.
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// The address of the worker's own listener (`/healthz`, `/readyz`, `/metrics`).
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.listen_addr
    }

    /// Counters of what the worker has done so far.
    pub fn stats(&self) -> WorkerStats {
        self.shared.stats.snapshot()
    }

    /// Registry names of the models loaded now.
    pub fn loaded_models(&self) -> Vec<String> {
        self.shared.models.loaded()
    }

    /// Graceful stop: no new leases; the batch in hand is finished and published; a
    /// prepared batch not yet started is given back; then the worker deregisters. Returns
    /// once every task has ended, with what the worker did in its life. An error means only
    /// that deregistration failed (the coordinator then forgets the worker when its
    /// heartbeats stop).
    pub async fn stop(mut self) -> Result<WorkerStats, WorkerError> {
        let shared = self.shared.clone();
        let _ = self.stop_tx.send(true);
        tracing::info!(worker = %shared.worker_id, "stopping: finishing the batch in hand");
        join(self.tasks.prefetch.take()).await;
        // A prepared batch no compute slot has taken goes back at once, so another worker
        // can start it while this one finishes.
        for lease in shared.queue.close() {
            release(&shared, &lease).await;
        }
        for compute in std::mem::take(&mut self.tasks.compute) {
            let _ = compute.await;
        }
        // Every compute slot has ended, so the reporter ends once it has published all.
        join(self.tasks.reporter.take()).await;
        // Heartbeats (and background model loads) last, so no lease expired meanwhile.
        for task in [self.tasks.heartbeat.take(), self.tasks.http.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
            let _ = task.await;
        }
        let path = format!("/v1/workers/{}", encode_segment(&shared.worker_id));
        match shared
            .client
            .with_deadline(Duration::from_secs(5))
            .delete(&path)
            .await
        {
            Ok(_) => {}
            // The leader no longer knows this worker (a new leader that never heard from it,
            // or one that forgot it): there is nothing to deregister.
            Err(e) if e.status() == Some(404) => {
                tracing::debug!(worker = %shared.worker_id, "the leader did not know this worker")
            }
            Err(e) => return Err(WorkerError::coordinator(format!("DELETE {path}"), e)),
        }
        let stats = shared.stats.snapshot();
        tracing::info!(worker = %shared.worker_id, ?stats, "worker stopped and deregistered");
        Ok(stats)
    }

    /// Abrupt end, as if the process died: every task is aborted at its next await point,
    /// nothing is released, nothing deregistered; the coordinator finds out when heartbeats
    /// stop. A forward pass already running on a compute thread runs to its end and its
    /// result is dropped. Returns once every task has ended.
    pub async fn kill(mut self) {
        // No stop signal: it would let the prefetch task start a release before the abort.
        let tasks = self.tasks.take_all();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        // Preparations in flight end too; their leases are not given back.
        drop(self.shared.queue.close());
        tracing::info!(worker = %self.shared.worker_id, "worker killed");
    }
}

/// Runs a worker until `shutdown` resolves (the binary passes SIGINT/SIGTERM), then stops it
/// gracefully. Registration is retried while no coordinator answers; a configuration the
/// cluster refuses is an error.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    config.validate()?;
    tokio::pin!(shutdown);
    let handle = loop {
        tokio::select! {
            started = start(config.clone()) => match started {
                Ok(handle) => break handle,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot register yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = &mut shutdown => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            },
            _ = &mut shutdown => return Ok(()),
        }
    };
    (&mut shutdown).await;
    handle.stop().await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_come_thrice_per_lease_timeout_at_least() {
        let r = |hb, lease| WorkerRegistered {
            worker_id: "w".into(),
            heartbeat_interval_ms: hb,
            lease_timeout_ms: lease,
        };
        assert_eq!(
            heartbeat_interval(&r(1000, 5000)),
            Duration::from_millis(1000)
        );
        assert_eq!(
            heartbeat_interval(&r(4000, 6000)),
            Duration::from_millis(2000)
        );
        assert_eq!(heartbeat_interval(&r(0, 0)), MIN_HEARTBEAT);
        assert_eq!(heartbeat_interval(&r(500, 0)), Duration::from_millis(500));
    }
}
