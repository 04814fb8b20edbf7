//! Heartbeats: the worker's sign of life, sent to *every* coordinator each
//! `heartbeat_interval_ms` the coordinator gave at registration, reporting the models loaded
//! now and the leases held. Each coordinator keeps its own record of who is alive, so a new
//! leader already knows which workers went silent. A worker silent for one lease timeout
//! loses its leases, so this task never waits on compute.
//!
//! The answer may name models the cluster wants every worker to load
//! (`POST /v1/models/{name}/load`); those, and the models named by `--models` at start-up,
//! are loaded in background tasks owned by this one (stopping it stops them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idunno_api::worker::{Heartbeat, HeartbeatAck};
use tokio::task::{Id, JoinSet};

use crate::config::ModelSelection;
use crate::coordinator::encode_segment;
use crate::error::WorkerError;
use crate::model_cache::ModelSpec;
use crate::shared::Shared;

/// After a failed background load, the same model is not tried again for this long.
const LOAD_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The heartbeat loop; runs until the worker aborts it, last of all its tasks.
pub(crate) async fn heartbeat_loop(shared: Arc<Shared>) {
    let path = format!(
        "/v1/workers/{}/heartbeat",
        encode_segment(&shared.worker_id)
    );
    let mut loader = Loader::default();
    if let ModelSelection::Only(names) = &shared.config.models {
        for name in names {
            loader.request(&shared, name);
        }
    }
    let mut tick = tokio::time::interval(shared.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        loader.reap();
        let beat = Heartbeat {
            loaded: shared.models.loaded(),
            capacity: shared.config.capacity,
            name: shared.config.display_name(),
            accepts: shared.config.models.accepts(),
            holding: Some(shared.holding.list()),
        };
        match beat_everyone(&shared, &path, &beat).await {
            Ok(ack) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        after_ms = since.elapsed().as_millis() as u64,
                        "heartbeats answered again"
                    );
                }
                shared.stats.record_heartbeat();
                for name in &ack.load {
                    loader.request(&shared, name);
                }
            }
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(error = %e, "heartbeat not answered");
                }
            }
        }
    }
}

/// Sends `beat` to every coordinator at once, each attempt bounded by the heartbeat interval;
/// the models to load are those any of them named. An error only if none answered.
async fn beat_everyone(
    shared: &Shared,
    path: &str,
    beat: &Heartbeat,
) -> Result<HeartbeatAck, String> {
    let timeout = shared.heartbeat_interval.max(Duration::from_millis(200));
    let calls = shared.client.coordinators().into_iter().map(|base| {
        let mut request = shared
            .client
            .http()
            .post(format!("{base}{path}"))
            .timeout(timeout)
            .json(beat);
        if let Some(token) = shared.client.token() {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.map_err(|e| format!("{base}: {e}"))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("{base}: answered {status}"));
            }
            response
                .json::<HeartbeatAck>()
                .await
                .map_err(|e| format!("{base}: bad answer: {e}"))
        }
    });
    let mut answered = false;
    let mut load: Vec<String> = Vec::new();
    let mut last_error = String::new();
    for outcome in futures::future::join_all(calls).await {
        match outcome {
            Ok(ack) => {
                answered = true;
                for name in ack.load {
                    if !load.contains(&name) {
                        load.push(name);
                    }
                }
            }
            Err(e) => last_error = e,
        }
    }
    if answered {
        Ok(HeartbeatAck { load })
    } else {
        Err(last_error)
    }
}

/// Background model loads, at most one per registry name at a time.
#[derive(Default)]
struct Loader {
    tasks: JoinSet<Result<(), WorkerError>>,
    /// Registry name of each running load.
    running: HashMap<Id, String>,
    /// When a load of each name last failed.
    failed: HashMap<String, Instant>,
}

impl Loader {
    /// Starts loading `name` unless it is loaded, loading, not accepted, or failed lately.
    fn request(&mut self, shared: &Arc<Shared>, name: &str) {
        if !shared.config.models.allows(name)
            || shared.models.is_loaded(name)
            || self.running.values().any(|n| n == name)
            || self
                .failed
                .get(name)
                .is_some_and(|at| at.elapsed() < LOAD_RETRY_AFTER)
        {
            return;
        }
        let shared = shared.clone();
        let owned = name.to_string();
        let handle = self
            .tasks
            .spawn(async move { load_by_name(&shared, &owned).await });
        self.running.insert(handle.id(), name.to_string());
        tracing::info!(model = %name, "loading model in the background");
    }

    /// Collects finished loads.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            let (id, outcome) = match done {
                Ok((id, outcome)) => (id, outcome),
                Err(e) => (e.id(), Err(WorkerError::Task(e.to_string()))),
            };
            let Some(name) = self.running.remove(&id) else {
                continue;
            };
            if let Err(e) = outcome {
                tracing::warn!(model = %name, error = %e, "background load failed");
                self.failed.insert(name, Instant::now());
            }
        }
    }
}

/// Looks the model up in the registry and loads it.
async fn load_by_name(shared: &Shared, name: &str) -> Result<(), WorkerError> {
    let path = format!("/v1/models/{}", encode_segment(name));
    let entry: idunno_api::model::Model = shared
        .client
        .get(&path)
        .await
        .map_err(|e| WorkerError::coordinator(format!("GET {path}"), e))?;
    let spec = ModelSpec::from_registry(&entry)?;
    shared.models.get(&spec).await?;
    Ok(())
}
