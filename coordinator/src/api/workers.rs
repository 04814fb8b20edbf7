//! The worker protocol: register, heartbeat, long-poll for a lease, give a lease back,
//! complete a batch. Served by the leader (followers forward), which keeps worker liveness as
//! soft state and commits leases and completions through Raft.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use idunno_api::worker::{
    Completion, CompletionAck, Heartbeat, HeartbeatAck, Lease, LeaseRequest, LeasedInput, Release,
    WorkerInfo, WorkerRegistered, WorkerRegistration,
};

use super::request_id;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::node::Coordinator;
use crate::state::command::{Command, LeaseGrant, Response};
use crate::state::jobs::{BatchId, MAX_BATCH_SIZE, MAX_COMPUTE_MS};
use crate::workers::new_worker_id;

/// Longest a lease call waits for work.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/v1/workers", get(list))
        .route("/v1/workers/register", post(register))
        .route("/v1/workers/{id}", delete(deregister))
        .route("/v1/workers/{id}/heartbeat", post(heartbeat))
        .route("/v1/workers/{id}/lease", post(lease))
        .route("/v1/workers/{id}/release", post(release))
        .route("/v1/batches/{id}/complete", post(complete))
}

fn check_worker_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::BadRequest(format!("{id:?} is not a worker id")));
    }
    Ok(())
}

async fn list(State(c): State<Arc<Coordinator>>) -> Json<Vec<WorkerInfo>> {
    Json(c.leader_state().workers.list())
}

async fn register(
    State(c): State<Arc<Coordinator>>,
    ApiJson(body): ApiJson<WorkerRegistration>,
) -> (StatusCode, Json<WorkerRegistered>) {
    let id = new_worker_id();
    {
        let mut leader = c.leader_state();
        let w = leader.workers.seen(&id);
        w.name = body.name;
        w.capacity = body.capacity.max(1);
        if body.accepts.is_some() {
            w.accepts = body.accepts;
        }
        w.loaded = body.loaded;
    }
    tracing::info!(worker = %id, "worker registered");
    (
        StatusCode::CREATED,
        Json(WorkerRegistered {
            worker_id: id,
            heartbeat_interval_ms: c.config.worker_heartbeat_ms,
            lease_timeout_ms: c.config.lease_timeout_ms,
        }),
    )
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
        if !c.leader_state().workers.remove(&id) {
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
    tracing::info!(worker = %id, "worker deregistered");
    Ok(StatusCode::NO_CONTENT)
}

async fn heartbeat(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    check_worker_id(&id)?;
    let applied = c.shared.read();
    let mut leader = c.leader_state();
    let w = leader.workers.seen(&id);
    w.loaded = body.loaded;
    w.capacity = body.capacity.max(1);
    if !body.name.is_empty() {
        w.name = body.name;
    }
    if body.accepts.is_some() {
        w.accepts = body.accepts;
    }
    let load = applied
        .state
        .preloaded_models()
        .filter(|m| !w.loaded.contains(&m.name))
        .filter(|m| w.accepts.as_ref().is_none_or(|a| a.contains(&m.name)))
        .map(|m| m.name.clone())
        .collect();
    Ok(Json(HeartbeatAck { load }))
}

/// Long-polls for a batch: the scheduler picks the job, the lease commits through Raft, and
/// the answer carries everything the worker needs. 204 if nothing came up in time.
async fn lease(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(worker): ApiPath<String>,
    ApiJson(body): ApiJson<LeaseRequest>,
) -> Result<HttpResponse, ApiError> {
    check_worker_id(&worker)?;
    let request = request_id(&headers);
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms).min(MAX_WAIT);
    let mut shutdown = c.shutdown.clone();
    loop {
        let notified = c.shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(job) = pick(&c, &worker) {
            let cmd = Command::Lease {
                worker: worker.clone(),
                job,
                lease_timeout_ms: c.config.max_batch_ms,
            };
            match c.write(request.clone(), cmd).await? {
                Response::Leased(grant) => {
                    c.metrics.leases_granted.add(1);
                    return Ok(Json(to_lease(&c, grant)?).into_response());
                }
                Response::NoWork => continue,
                other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
            }
        }
        if Instant::now() >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|s| *s) => return Err(ApiError::Unavailable("shutting down".into())),
        }
    }
}

/// The job the scheduler serves next with this worker, marking the worker alive.
fn pick(c: &Coordinator, worker: &str) -> Option<u64> {
    let applied = c.shared.read();
    let mut leader = c.leader_state();
    leader.workers.seen(worker);
    let runnable: Vec<_> = applied
        .state
        .runnable_jobs()
        .filter(|j| leader.workers.accepts(worker, &j.model))
        .collect();
    leader.fair.pick(runnable.into_iter(), Instant::now())
}

fn to_lease(c: &Coordinator, grant: LeaseGrant) -> Result<Lease, ApiError> {
    let applied = c.shared.read();
    let state = &applied.state;
    let job = state.job(grant.batch.job)?;
    let model = state
        .models
        .get(&job.model)
        .ok_or_else(|| ApiError::Conflict(format!("model {:?} was deleted", job.model)))?;
    Ok(Lease {
        lease_id: grant.lease_id,
        batch_id: grant.batch.to_string(),
        job_id: grant.batch.job,
        model: model.name.clone(),
        arch: model.arch.clone(),
        weights: model.weights.clone(),
        input_size: model.input_size,
        inputs: grant
            .inputs
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let located = state.version(&name, None).ok().map(|v| {
                    (
                        v.hash.clone(),
                        v.size,
                        crate::files::placement::live_replicas(state, &v.hash),
                    )
                });
                let (hash, size, replicas) = match located {
                    Some((hash, size, replicas)) => (Some(hash), size, replicas),
                    None => (None, 0, Vec::new()),
                };
                LeasedInput {
                    index: grant.start + i as u64,
                    name,
                    hash,
                    size,
                    replicas,
                }
            })
            .collect(),
        attempt: grant.attempt,
        deadline_ms: grant.deadline_ms,
    })
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

async fn complete(
    State(c): State<Arc<Coordinator>>,
    ApiPath(batch): ApiPath<String>,
    ApiJson(body): ApiJson<Completion>,
) -> Result<Json<CompletionAck>, ApiError> {
    let batch: BatchId = batch.parse()?;
    if body.result.is_empty() || body.result.len() > 1024 {
        return Err(ApiError::BadRequest(
            "result must name an object (1-1024 characters)".into(),
        ));
    }
    if body.compute_ms > MAX_COMPUTE_MS {
        return Err(ApiError::BadRequest(format!(
            "compute_ms {} is more than a week ({MAX_COMPUTE_MS})",
            body.compute_ms
        )));
    }
    if body.failed > MAX_BATCH_SIZE {
        return Err(ApiError::BadRequest(format!(
            "failed {} is more than any batch holds ({MAX_BATCH_SIZE})",
            body.failed
        )));
    }
    let cmd = Command::Complete {
        batch,
        lease_id: body.lease_id,
        result: body.result,
        failed: body.failed,
        compute_ms: body.compute_ms,
    };
    match c.write(String::new(), cmd).await? {
        Response::Completed { accepted } => {
            if accepted {
                c.metrics.batches_completed.add(1);
                let applied = c.shared.read();
                let len = applied
                    .state
                    .batches
                    .get(&batch)
                    .map_or(0, |b| u64::from(b.len));
                let mut leader = c.leader_state();
                leader.fair.record(batch.job, len, Instant::now());
            }
            Ok(Json(CompletionAck { accepted }))
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}
