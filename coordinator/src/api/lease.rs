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
//!
//! The same call hands out online batches ([`crate::online`]): when a model's queue makes a
//! batch and online traffic's virtual time is not behind the job the worker would get, the
//! answer carries the online batch instead (nothing is committed for it). A worker that has
//! the model loaded is preferred: while one does, others are given the model's batches only
//! once every such worker has an online batch in hand, or the oldest request has waited
//! [`SPILL_AFTER`] past its batching delay — the loaded workers are not keeping up, and one
//! more worker loading the model is worth its load time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Json;
use idunno_api::online::OnlineLease;
use idunno_api::worker::{Lease, LeaseAnswer, LeaseRef, LeaseRequest, LeasedInput};

use super::request_id;
use super::worker_id::check_worker_id;
use crate::app::{Coordinator, LeaderState};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::leader::scheduler::{passes_per_lease, Prepared};
use crate::leader::workers::Workers;
use crate::online::{Batching, TakenBatch};
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
    /// The model to hand an online batch of now, instead of `lease`.
    online: Option<(String, Batching)>,
    /// When the next online batch this worker could run falls due (its oldest request's
    /// queue delay runs out).
    online_due: Option<Instant>,
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
    // Open until this call returns (or its client goes away): the worker is asking.
    let _asking = c.online.asking(&worker);
    let called = Instant::now();
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms).min(MAX_WAIT);
    let mut shutdown = c.shutdown.clone();
    loop {
        let notified = c.shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let online_arrived = c.online.wake.notified();
        tokio::pin!(online_arrived);
        online_arrived.as_mut().enable();
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
        if let Some((model, batch)) = c.online.given(&worker, &request) {
            return online_answer(&c, &model, batch, Vec::new());
        }
        let decision = decide(&c, &worker, &body.prepared);
        tracing::debug!(%worker, prepared = ?body.prepared, ?decision, "lease decision");
        if let Some((model, batching)) = &decision.online {
            if let Some(batch) = c.online.take(model, batching.max_batch, &worker, &request) {
                let label = crate::metrics::ModelLabel {
                    model: model.clone(),
                };
                c.metrics
                    .online_batch_size
                    .get_or_create(&label)
                    .observe(batch.inputs.len() as f64);
                let delays = c.metrics.online_queue_delay.get_or_create(&label);
                for waited in &batch.waited {
                    delays.observe(waited.as_secs_f64());
                }
                drop(delays);
                return online_answer(&c, model, batch, decision.revoked);
            }
        }
        let mut granted = None;
        if let Some(job) = decision.lease {
            let passes = {
                let applied = c.shared.read();
                let state = &applied.state;
                state.jobs.get(&job).map_or(1, |j| {
                    passes_per_lease(
                        state.cost_ms_per_query(&j.model),
                        j.batch_size,
                        c.config.lease_target_ms,
                    )
                })
            };
            let cmd = Command::Lease {
                worker: worker.clone(),
                job,
                lease_timeout_ms: c.config.max_batch_ms,
                passes,
            };
            match c.write(request.clone(), cmd).await? {
                Response::Leased(grant) => {
                    c.metrics.leases_granted.inc();
                    c.metrics.lease_wait.observe(called.elapsed().as_secs_f64());
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
        let online_due = decision.online_due.unwrap_or(deadline).min(deadline);
        tokio::select! {
            _ = &mut notified => {}
            _ = &mut online_arrived => {}
            _ = tokio::time::sleep_until(online_due.into()) => {}
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
    Ok(Json(LeaseAnswer {
        lease,
        revoked,
        online: None,
    })
    .into_response())
}

/// An answer carrying an online batch of `model` (and the revocations decided with it).
fn online_answer(
    c: &Coordinator,
    model: &str,
    batch: TakenBatch,
    revoked: Vec<LeaseRef>,
) -> Result<HttpResponse, ApiError> {
    let record = c.shared.read().state.models.get(model).cloned();
    let record =
        record.ok_or_else(|| ApiError::Conflict(format!("model {model:?} was deleted")))?;
    let online = OnlineLease {
        batch_id: batch.batch_id,
        model: record.name,
        arch: record.arch,
        weights: record.weights,
        input_size: record.input_size,
        cost_ms: record.cost_ms.unwrap_or(0),
        inputs: batch.inputs,
        top_k: batch.top_k,
    };
    Ok(Json(LeaseAnswer {
        lease: None,
        revoked,
        online: Some(online),
    })
    .into_response())
}

/// The scheduler's answer for `worker`, which holds `prepared`, marking it alive.
fn decide(c: &Coordinator, worker: &str, prepared: &[LeaseRef]) -> Decision {
    // Lock order everywhere: the shared state, the leader's soft state, the workers.
    let applied = c.shared.read();
    let mut leader = c.leader_state();
    let mut workers = c.workers();
    workers.seen(worker);
    let mut decision = decide_in(&applied.state, &mut leader, &workers, worker, prepared);
    // Online traffic's turn: its virtual time against the job this worker would get.
    let online_v = leader.fair.online(
        c.online.served(),
        c.config.online_weight,
        !c.online.is_empty(),
    );
    let kept = prepared.len().saturating_sub(decision.revoked.len());
    if let (Some(online_v), true) = (online_v, kept <= 1) {
        let (due, next) = due_online(c, &applied.state, &workers, worker);
        decision.online_due = next;
        let job_v = decision
            .lease
            .and_then(|id| applied.state.jobs.get(&id))
            .and_then(|j| leader.fair.vtime(j));
        if due.is_some() && job_v.is_none_or(|v| online_v <= v) {
            decision.online = due;
            decision.lease = None;
            decision.displaced = None;
        }
    }
    decision
}

/// How long past its batching delay an online request may wait for the workers that have its
/// model loaded, while one of them is free, before another worker is given its batch (and
/// loads the model). While every one of them is occupied (see
/// [`crate::online::Online::all_occupied`]), another worker is given the batch as soon as it
/// is due.
const SPILL_AFTER: Duration = Duration::from_millis(100);

/// The model whose online batch `worker` should run now (due, and the worker runs it,
/// preferring workers that have it loaded; the oldest request first), and when the next one
/// it could run falls due.
fn due_online(
    c: &Coordinator,
    state: &Replicated,
    workers: &Workers,
    worker: &str,
) -> (Option<(String, Batching)>, Option<Instant>) {
    let now = Instant::now();
    let alive = c.config.lease_timeout();
    let mut best: Option<(Instant, String, Batching)> = None;
    let mut next: Option<Instant> = None;
    for (model, oldest) in c.online.waiting() {
        let Some(record) = state.models.get(&model) else {
            continue;
        };
        if !workers.accepts(worker, &model) {
            continue;
        }
        let batching = Batching {
            max_batch: record
                .online
                .max_batch_size
                .unwrap_or(c.config.online_max_batch),
            max_delay: Duration::from_millis(u64::from(
                record
                    .online
                    .max_queue_delay_ms
                    .unwrap_or(c.config.online_max_delay_ms),
            )),
        };
        let loaded = workers.with_model(&model, alive);
        if !loaded.is_empty() && !loaded.iter().any(|w| w == worker) {
            // Every worker with the model is occupied (an online batch in hand, and not back
            // for more): the batch would wait for one of them to finish, so this one takes it
            // (and loads the model) now. A worker with the model that is asking takes it.
            let spill_at = oldest + batching.max_delay + SPILL_AFTER;
            match c.online.all_occupied(&loaded, now) {
                Ok(()) => {}
                Err(_) if now >= spill_at => {}
                Err(recheck) => {
                    let at = recheck.map_or(spill_at, |r| r.min(spill_at));
                    next = Some(next.map_or(at, |n| n.min(at)));
                    continue;
                }
            }
        }
        match c.online.due(&model, batching, now) {
            Ok(()) => {
                if best.as_ref().is_none_or(|(t, ..)| oldest < *t) {
                    best = Some((oldest, model, batching));
                }
            }
            Err(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
            Err(None) => {}
        }
    }
    (best.map(|(_, m, b)| (m, b)), next)
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
        ..Decision::default()
    }
}

/// A prepared lease the worker should keep: still this worker's current lease of the batch,
/// of a running job, cut at no larger a batch size than the job's now. Returns the job and
/// the batch's length.
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
    (job.state == JobState::Running && batch.fits(job)).then_some((job, u64::from(batch.len)))
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
        batch_size: state
            .batches
            .get(&grant.batch)
            .map_or(job.batch_size, |b| b.pass_size()),
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
