//! `POST /v1/workers/{id}/lease`: the long poll every worker keeps outstanding.
//!
//! A worker with room asks for its next batch; the scheduler picks the job and the lease
//! commits through Raft. A worker whose next batch is already prepared (leased, inputs
//! fetched, not started) lists it in `prepared` and the same call waits for a reason to give
//! it back: its job was stopped or deleted, its batch size shrank, its lease is no longer
//! current, or a job with nothing running should take its place (then the answer carries
//! that job's lease too). So a stop, a new job or a batch-size change reaches every worker
//! at once, while prefetching still hides input decoding behind compute.
//!
//! The call's request id (`Idempotency-Key`) names the lease it gets: a worker that gives up
//! waiting (or loses the answer) and asks again with the same id gets the same lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Json;
use idunno_api::worker::{Lease, LeaseAnswer, LeaseRef, LeaseRequest, LeasedInput};

use super::request_id;
use super::worker_id::check_worker_id;
use crate::app::{Coordinator, LeaderState};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::leader::scheduler::Prepared;
use crate::leader::workers::Workers;
use crate::state::command::{Command, LeaseGrant, Response};
use crate::state::jobs::{BatchId, BatchState, JobRecord};
use crate::state::State as Replicated;
use idunno_api::job::JobState;

/// Longest a lease call waits for work.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Most prepared leases one call may list.
const MAX_PREPARED: usize = 64;

/// What the leader answers a lease call with, decided in one look at the state.
#[derive(Debug, Default, PartialEq)]
struct Decision {
    /// Prepared leases to give back (or drop, when no longer current).
    revoked: Vec<LeaseRef>,
    /// The job to lease a batch of now.
    lease: Option<u64>,
    /// The prepared lease the new batch takes the place of: revoked once the lease is granted.
    displaced: Option<LeaseRef>,
}

pub(super) async fn lease(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(worker): ApiPath<String>,
    ApiJson(body): ApiJson<LeaseRequest>,
) -> Result<HttpResponse, ApiError> {
    check_worker_id(&worker)?;
    if body.prepared.len() > MAX_PREPARED {
        return Err(ApiError::BadRequest(format!(
            "prepared lists {} leases; at most {MAX_PREPARED}",
            body.prepared.len()
        )));
    }
    let request = request_id(&headers);
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms).min(MAX_WAIT);
    let mut shutdown = c.shutdown.clone();
    loop {
        let notified = c.shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // A node that stopped leading (deposed, or cut off from its quorum) sends the worker
        // on to another coordinator instead of holding its call.
        if !c.is_leader() {
            return Err(ApiError::NoLeader(
                "this node no longer leads; retry another coordinator".into(),
            ));
        }
        // An earlier call with this request id was granted a lease: that one is the answer.
        let earlier = c.shared.read().state.lease_for_request(&request);
        if let Some(grant) = earlier {
            return answer(&c, Some(grant), Vec::new());
        }
        let decision = decide(&c, &worker, &body.prepared);
        tracing::debug!(%worker, prepared = ?body.prepared, ?decision, "lease decision");
        let mut granted = None;
        if let Some(job) = decision.lease {
            let cmd = Command::Lease {
                worker: worker.clone(),
                job,
                lease_timeout_ms: c.config.max_batch_ms,
            };
            match c.write(request.clone(), cmd).await? {
                Response::Leased(grant) => {
                    c.metrics.leases_granted.add(1);
                    granted = Some(grant);
                }
                // The job ran out between the look and the commit; look again when woken.
                Response::NoWork => {}
                other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
            }
        }
        let mut revoked = decision.revoked;
        if granted.is_some() {
            revoked.extend(decision.displaced);
        }
        if granted.is_some() || !revoked.is_empty() {
            return answer(&c, granted, revoked);
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

fn answer(
    c: &Coordinator,
    grant: Option<LeaseGrant>,
    revoked: Vec<LeaseRef>,
) -> Result<HttpResponse, ApiError> {
    let lease = grant.map(|g| to_lease(c, g)).transpose()?;
    Ok(Json(LeaseAnswer { lease, revoked }).into_response())
}

/// The scheduler's answer for `worker`, which holds `prepared`, marking it alive.
fn decide(c: &Coordinator, worker: &str, prepared: &[LeaseRef]) -> Decision {
    // Lock order everywhere: the shared state, the leader's soft state, the workers.
    let applied = c.shared.read();
    let mut leader = c.leader_state();
    let mut workers = c.workers();
    workers.seen(worker);
    decide_in(&applied.state, &mut leader, &workers, worker, prepared)
}

fn decide_in(
    state: &Replicated,
    leader: &mut LeaderState,
    workers: &Workers,
    worker: &str,
    prepared: &[LeaseRef],
) -> Decision {
    let fair = &mut leader.fair;
    let mut revoked = Vec::new();
    let mut kept: Vec<(&JobRecord, u64, &LeaseRef)> = Vec::new();
    for r in prepared {
        match still_wanted(state, worker, r) {
            Some((job, len)) => kept.push((job, len, r)),
            None => revoked.push(r.clone()),
        }
    }
    // What this worker holds unstarted is not charged to its job until it starts; what
    // other workers said they hold counts as long as it is still leased so.
    let held = kept
        .iter()
        .filter_map(|(_, len, r)| {
            Some(Prepared {
                batch: r.batch_id.parse().ok()?,
                lease_id: r.lease_id,
                len: *len,
            })
        })
        .collect();
    fair.set_prepared(worker, held);
    fair.retain_prepared(|p| {
        state.batches.get(&p.batch).is_some_and(
            |b| matches!(b.state, BatchState::Leased { lease_id, .. } if lease_id == p.lease_id),
        )
    });
    fair.refresh(state.running_jobs());
    let candidates = || {
        state
            .runnable_jobs()
            .filter(|j| workers.accepts(worker, &j.model))
    };
    let (lease, displaced) = match kept.as_slice() {
        [] => (fair.pick(candidates()), None),
        [(job, len, r)] => match fair.displacer(job, *len, candidates()) {
            Some(other) => (Some(other), Some((*r).clone())),
            None => (None, None),
        },
        // A worker holding several unstarted batches gets nothing more until it starts one.
        _ => (None, None),
    };
    Decision {
        revoked,
        lease,
        displaced,
    }
}

/// A prepared lease the worker should keep: still this worker's current lease of the batch,
/// of a running job, no longer than the job's batch size. Returns the job and the batch's
/// length.
fn still_wanted<'a>(
    state: &'a Replicated,
    worker: &str,
    r: &LeaseRef,
) -> Option<(&'a JobRecord, u64)> {
    let id: BatchId = r.batch_id.parse().ok()?;
    let batch = state.batches.get(&id)?;
    match &batch.state {
        BatchState::Leased {
            lease_id,
            worker: holder,
            ..
        } if *lease_id == r.lease_id && holder == worker => {}
        _ => return None,
    }
    let job = state.jobs.get(&id.job)?;
    (job.state == JobState::Running && batch.len <= job.batch_size)
        .then_some((job, u64::from(batch.len)))
}

/// Everything a worker needs for a granted batch: the model, and where each input is.
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
        arch: model.arch,
        weights: model.weights.clone(),
        input_size: model.input_size,
        cost_ms: model.cost_ms.unwrap_or(0),
        inputs: grant
            .inputs
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let located = state.version(&name, None).ok().map(|v| {
                    (
                        v.hash.clone(),
                        v.size,
                        crate::replicas::placement::live_replicas(state, &v.hash),
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
