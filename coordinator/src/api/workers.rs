//! The worker protocol: register, heartbeat, long-poll for a lease, give a lease back,
//! complete a batch. Served by the leader (followers forward), which keeps worker liveness as
//! soft state and commits leases and completions through Raft.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use idunno_api::result::result_path;
use idunno_api::worker::{
    Completion, CompletionAck, Heartbeat, HeartbeatAck, Release, WorkerInfo, WorkerRegistered,
    WorkerRegistration,
};

use super::worker_id::check_worker_id;
use crate::app::Coordinator;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::leader::workers::new_worker_id;
use crate::proposer::now_ms;
use crate::replicas::gc::collect_garbage;
use crate::replicas::upload;
use crate::state::command::{Command, Response};
use crate::state::jobs::{BatchId, MAX_BATCH_SIZE, MAX_COMPUTE_MS};

/// A lease granted this long ago that a worker's heartbeat does not list was never received
/// by it (the answer was lost): at least this long, and three heartbeat intervals.
const ORPHAN_GRACE_MS: u64 = 2_000;

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/v1/workers", get(list))
        .route("/v1/workers/register", post(register))
        .route("/v1/workers/{id}", delete(deregister))
        .route("/v1/workers/{id}/heartbeat", post(heartbeat))
        .route("/v1/workers/{id}/lease", post(super::lease::lease))
        .route("/v1/workers/{id}/release", post(release))
        .route("/v1/batches/{id}/complete", post(complete))
}

/// Most batches a worker may compute at once.
const MAX_CAPACITY: u32 = 64;

/// Most model names a worker may list (accepted or loaded).
const MAX_MODELS: usize = 256;

/// Checks what a worker says of itself at registration and in heartbeats.
fn check_worker_info(
    name: &str,
    capacity: u32,
    accepts: Option<&[String]>,
    loaded: &[String],
) -> Result<(), ApiError> {
    if name.len() > crate::state::workers::MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "a worker name is at most {} bytes, without control characters",
            crate::state::workers::MAX_NAME
        )));
    }
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(ApiError::BadRequest(format!(
            "capacity must be from 1 to {MAX_CAPACITY}, not {capacity}"
        )));
    }
    for list in accepts.into_iter().chain([loaded]) {
        if list.len() > MAX_MODELS || list.iter().any(|m| m.is_empty() || m.len() > 128) {
            return Err(ApiError::BadRequest(format!(
                "model lists hold at most {MAX_MODELS} names of 1-128 bytes"
            )));
        }
    }
    Ok(())
}

/// The workers this node hears from (every node: workers heartbeat them all).
async fn list(State(c): State<Arc<Coordinator>>) -> Json<Vec<WorkerInfo>> {
    Json(c.workers().list())
}

async fn register(
    State(c): State<Arc<Coordinator>>,
    ApiJson(body): ApiJson<WorkerRegistration>,
) -> Result<(StatusCode, Json<WorkerRegistered>), ApiError> {
    check_worker_info(
        &body.name,
        body.capacity,
        body.accepts.as_deref(),
        &body.loaded,
    )?;
    let id = new_worker_id();
    // Every coordinator learns the worker's name (statistics name the workers of a job).
    let cmd = Command::RegisterWorker {
        id: id.clone(),
        name: body.name.clone(),
    };
    c.write(String::new(), cmd).await?;
    {
        let mut workers = c.workers();
        let w = workers.seen(&id);
        w.name = body.name;
        w.capacity = body.capacity.max(1);
        if body.accepts.is_some() {
            w.accepts = body.accepts;
        }
        w.described = true;
        w.loaded = body.loaded;
    }
    tracing::info!(worker = %id, "worker registered");
    Ok((
        StatusCode::CREATED,
        Json(WorkerRegistered {
            worker_id: id,
            heartbeat_interval_ms: c.config.worker_heartbeat_ms,
            lease_timeout_ms: c.config.lease_timeout_ms,
        }),
    ))
}

/// Forgets a worker and puts the batches it still holds back in the queue at once (a worker
/// deregisters after finishing what it computes, so whatever it still holds, such as a lease
/// granted to a long-poll it gave up on, would otherwise wait out the lease timeout). 404 if
/// this leader does not know it (never heard from it, or forgot it after a long silence).
async fn deregister(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    check_worker_id(&id)?;
    let held: Vec<(BatchId, u64)> = {
        // Lock order everywhere: the shared state first, then the leader's soft state.
        let applied = c.shared.read();
        let known = c.workers().remove(&id);
        if !known && !applied.state.is_registered_worker(&id) {
            return Err(ApiError::NotFound(format!("no worker {id}")));
        }
        applied
            .state
            .leases()
            .filter(|(_, _, worker, ..)| *worker == id)
            .map(|(batch, lease, ..)| (batch, lease))
            .collect()
    };
    if !held.is_empty() {
        let count = held.len();
        c.write(String::new(), Command::Expire { leases: held })
            .await?;
        tracing::info!(worker = %id, count, "requeued the leases of a deregistered worker");
    }
    c.write(String::new(), Command::DeregisterWorker { id: id.clone() })
        .await?;
    tracing::info!(worker = %id, "worker deregistered");
    Ok(StatusCode::NO_CONTENT)
}

/// A sign of life, sent to every coordinator: each records it (who is alive is each node's
/// own knowledge, so a new leader already knows who went silent) and answers with the models
/// to load. The leader also registers a worker the replicated state does not know yet, and
/// gives back leases granted to it that it does not hold (their answers never reached it).
async fn heartbeat(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    check_worker_id(&id)?;
    check_worker_info(
        &body.name,
        body.capacity,
        body.accepts.as_deref(),
        &body.loaded,
    )?;
    let leading = c.is_leader();
    let (ack, register, orphans) = {
        let applied = c.shared.read();
        let state = &applied.state;
        let mut workers = c.workers();
        let w = workers.seen(&id);
        w.loaded = body.loaded;
        w.capacity = body.capacity.max(1);
        if !body.name.is_empty() {
            w.name = body.name;
        }
        if body.accepts.is_some() {
            w.accepts = body.accepts;
        }
        if !w.described {
            w.described = true;
            // Its lease call may be waiting here for this: look again now.
            c.shared.work.notify_waiters();
        }
        let load = state
            .preloaded_models()
            .filter(|m| !w.loaded.contains(&m.name))
            .filter(|m| w.runs(&m.name))
            .map(|m| m.name.clone())
            .collect();
        let register = (leading && !state.is_registered_worker(&id)).then(|| w.name.clone());
        let grace = ORPHAN_GRACE_MS.max(c.config.worker_heartbeat_ms.saturating_mul(3));
        let horizon = now_ms().saturating_sub(grace);
        let orphans: Vec<(BatchId, u64)> = match &body.holding {
            Some(holding) if leading => state
                .leases()
                .filter(|(_, lease, worker, leased_at, _)| {
                    *worker == id && *leased_at < horizon && !holding.contains(lease)
                })
                .map(|(batch, lease, ..)| (batch, lease))
                .collect(),
            _ => Vec::new(),
        };
        (HeartbeatAck { load }, register, orphans)
    };
    if let Some(name) = register {
        c.write(
            String::new(),
            Command::RegisterWorker {
                id: id.clone(),
                name,
            },
        )
        .await?;
    }
    if !orphans.is_empty() {
        let count = orphans.len();
        c.write(String::new(), Command::Expire { leases: orphans })
            .await?;
        tracing::warn!(worker = %id, count, "requeued leases the worker never received");
    }
    Ok(Json(ack))
}

/// Gives a lease back. 404 for an unknown batch; 409 for a lease that is not this worker's,
/// or no longer the batch's current one (done, or expired and handed out again).
async fn release(
    State(c): State<Arc<Coordinator>>,
    ApiPath(worker): ApiPath<String>,
    ApiJson(body): ApiJson<Release>,
) -> Result<StatusCode, ApiError> {
    check_worker_id(&worker)?;
    let batch: BatchId = body.batch_id.parse()?;
    let holder = {
        let applied = c.shared.read();
        let record = applied
            .state
            .batches
            .get(&batch)
            .ok_or_else(|| ApiError::NotFound(format!("no batch {batch}")))?;
        record
            .leases
            .iter()
            .find(|(l, _)| *l == body.lease_id)
            .map(|(_, w)| w.clone())
    };
    if holder.as_deref().is_some_and(|h| h != worker) {
        return Err(ApiError::Conflict(format!(
            "lease {} of batch {batch} is not worker {worker}'s",
            body.lease_id
        )));
    }
    let cmd = Command::Release {
        batch,
        lease_id: body.lease_id,
    };
    match c.write(String::new(), cmd).await? {
        Response::Released { released: true } => Ok(StatusCode::NO_CONTENT),
        Response::Released { released: false } => Err(ApiError::Conflict(format!(
            "lease {} is not the current lease of batch {batch} (done, expired, or never \
             issued for it)",
            body.lease_id
        ))),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// `POST /v1/batches/{id}/complete`. A completion that carries its results object has it
/// stored on storage nodes first (unless the batch is done already: then nothing is stored)
/// and commits its file version and the completion as one Raft entry.
async fn complete(
    State(c): State<Arc<Coordinator>>,
    ApiPath(batch): ApiPath<String>,
    ApiJson(body): ApiJson<Completion>,
) -> Result<Json<CompletionAck>, ApiError> {
    let batch: BatchId = batch.parse()?;
    let Completion {
        lease_id,
        results,
        result,
        failed,
        compute_ms,
    } = body;
    let (result, failed, compute_ms, object) = match (results, result) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "a completion carries its results object (`results`) or names one (`result`), \
                 not both"
                    .into(),
            ))
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "a completion needs `results` (the results object) or `result` (its SDFS name)"
                    .into(),
            ))
        }
        (None, Some(name)) => {
            if name.is_empty() || name.len() > 1024 {
                return Err(ApiError::BadRequest(
                    "result must name an object (1-1024 characters)".into(),
                ));
            }
            (name, failed, compute_ms, None)
        }
        (Some(object), None) => {
            if object.job_id != batch.job || object.batch_id != batch.to_string() {
                return Err(ApiError::BadRequest(format!(
                    "the results object is batch {} of job {}, not batch {batch}",
                    object.batch_id, object.job_id
                )));
            }
            if object.results.len() > MAX_BATCH_SIZE as usize {
                return Err(ApiError::BadRequest(format!(
                    "{} results is more than any batch holds ({MAX_BATCH_SIZE})",
                    object.results.len()
                )));
            }
            let failed = object.results.iter().filter(|q| q.error.is_some()).count() as u32;
            let name = result_path(batch.job, &object.batch_id);
            (name, failed, object.compute_ms, Some(object))
        }
    };
    if compute_ms > MAX_COMPUTE_MS {
        return Err(ApiError::BadRequest(format!(
            "compute_ms {compute_ms} is more than a week ({MAX_COMPUTE_MS})"
        )));
    }
    if failed > MAX_BATCH_SIZE {
        return Err(ApiError::BadRequest(format!(
            "failed {failed} is more than any batch holds ({MAX_BATCH_SIZE})"
        )));
    }
    // One read of the applied state: the batch's model and span for the metrics and checks,
    // and whether a completion could count now.
    let (model, span, counts) = {
        let applied = c.shared.read();
        let state = &applied.state;
        (
            state.jobs.get(&batch.job).map(|j| j.model.clone()),
            state.batches.get(&batch).map(|b| (b.start, b.len)),
            state.completion_counts(batch, lease_id),
        )
    };
    let per_query = model.zip(span.map(|(_, len)| len));
    let stored = match object {
        None => None,
        Some(object) => {
            // A completion that cannot count stores nothing (the apply checks again).
            if !counts? {
                return Ok(Json(CompletionAck { accepted: false }));
            }
            // One result per query of the batch, in input order: what readers of the job's
            // results rely on.
            if let Some((start, len)) = span {
                let one_each = object.results.len() == len as usize
                    && (object.results.iter())
                        .zip(start..)
                        .all(|(q, index)| q.index == index);
                if !one_each {
                    return Err(ApiError::BadRequest(format!(
                        "the results object must hold one result per query of batch {batch}, \
                         in input order (indexes {start}..{})",
                        start + u64::from(len)
                    )));
                }
            }
            let bytes = serde_json::to_vec(&object)
                .map_err(|e| ApiError::Internal(format!("cannot encode the results: {e}")))?;
            let len = bytes.len() as u64;
            Some(upload::store(&c, axum::body::Body::from(bytes), Some(len), None).await?)
        }
    };
    let cmd = Command::Complete {
        batch,
        lease_id,
        result,
        failed,
        compute_ms,
        results: stored.as_ref().map(|s| s.version(c.config.keep_versions)),
    };
    match c.write(String::new(), cmd).await? {
        Response::Completed { accepted, freed } => {
            collect_garbage(&c, freed);
            // Late copies join the blob's replica set, or are deleted if it was freed.
            if let Some(stored) = stored {
                stored.committed(&c);
            }
            if accepted {
                c.metrics.batches_completed.inc();
                if let Some((model, len)) = per_query.filter(|(_, len)| *len > 0) {
                    c.metrics
                        .query_seconds
                        .get_or_create(&crate::metrics::ModelLabel { model })
                        .observe(compute_ms as f64 / 1000.0 / f64::from(len));
                }
            }
            Ok(Json(CompletionAck { accepted }))
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}
