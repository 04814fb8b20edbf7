//! Prefetch: the task that keeps a lease call outstanding at all times and gets each batch
//! ready (inputs fetched from storage nodes, then decoded on the compute pool) while the
//! compute loop runs the previous one, so the worker never waits on the network between
//! batches.
//!
//! The task keeps at most one prepared batch in the
//! [`PreparedQueue`](crate::queue::PreparedQueue). With the queue empty,
//! its lease call asks for the next batch. With a batch waiting there, the call lists it as
//! `prepared` and waits for the leader to revoke it (its job stopped, its batch size shrank,
//! or a job with nothing running takes its place, whose lease comes in the same answer); a
//! revoked batch that no compute slot has taken is given back (`release`) and goes to the
//! next free worker first. When a compute slot takes the waiting batch, the task drops its
//! call and asks for the next batch with the same request id, so a lease granted to the
//! dropped call is the one it gets. When the worker stops, a lease in hand that was not
//! started is given back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idunno_api::worker::{Lease, LeaseAnswer, LeaseRef, LeaseRequest};
use rayon::prelude::*;
use reqwest::{Method, StatusCode};

use crate::coordinator::{call_until_answered, encode_segment};
use crate::error::WorkerError;
use crate::inputs;
use crate::queue::PreparedBatch;
use crate::release::release;
use crate::shared::Shared;
use crate::stop::stopped;

/// Pause after a lease call failed with a definite error (e.g. 4xx), before the next one.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The prefetch loop; returns when the worker stops (the queue's batches, prepared or being
/// prepared, are given back by whoever stops the worker).
pub(crate) async fn prefetch_loop(shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    let mut taken = shared.queue.taken();
    // Kept until a call is answered: an answer lost to a dropped call is not a lost lease.
    let mut request_id = idunno_api::client::new_request_id();
    loop {
        taken.borrow_and_update();
        // An online batch not started yet: wait for a compute slot to take it before asking
        // for more, so that a burst of requests spreads over the workers instead of piling
        // up behind this one.
        if shared.queue.online_pending() > 0 {
            tokio::select! {
                _ = taken.changed() => continue,
                _ = stopped(&mut stop) => return,
            }
        }
        let prepared = shared.queue.prepared();
        let waiting = !prepared.is_empty();
        let answer = tokio::select! {
            answer = next_lease(&shared, &request_id, prepared) => answer,
            // The waiting batch was started: ask for the next one instead.
            _ = taken.changed(), if waiting => continue,
            _ = stopped(&mut stop) => return,
        };
        request_id = idunno_api::client::new_request_id();
        let answer = match answer {
            Ok(Some(answer)) => answer,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "lease call failed");
                tokio::select! {
                    _ = tokio::time::sleep(ERROR_PAUSE) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
        };
        for revoked in &answer.revoked {
            give_back_revoked(&shared, revoked);
        }
        if let Some(online) = answer.online {
            shared.queue.online_received();
            crate::online::start(&shared, online);
        }
        let Some(lease) = answer.lease else { continue };
        tracing::debug!(batch = %lease.batch_id, lease = lease.lease_id, inputs = lease.inputs.len(), "leased");
        shared.holding.add(lease.lease_id);
        shared.stats.record_lease();
        // Prepared in a task of its own, so that the next lease call (which lists this batch)
        // goes out at once and a revocation can reach it while its inputs are still decoding.
        let task_shared = shared.clone();
        let task_lease = lease.clone();
        shared.queue.preparing(lease, move || {
            tokio::spawn(async move {
                let batch = prepare(&task_shared, task_lease).await;
                task_shared.queue.ready(batch);
            })
            .abort_handle()
        });
    }
}

/// A batch the leader revoked: given back if no compute slot has started it (in the
/// background, so the next lease call goes out at once), else left to finish.
fn give_back_revoked(shared: &Arc<Shared>, revoked: &LeaseRef) {
    let Some(lease) = shared.queue.remove(revoked.lease_id) else {
        tracing::debug!(batch = %revoked.batch_id, "revoked batch already started; it finishes");
        return;
    };
    tracing::info!(batch = %revoked.batch_id, lease = revoked.lease_id, "batch revoked before it started; giving it back");
    let shared = shared.clone();
    tokio::spawn(async move { release(&shared, &lease).await });
}

/// One long poll: the answer, or `None` when nothing came up within the wait. The caller
/// keeps `request_id` until a call is answered.
async fn next_lease(
    shared: &Shared,
    request_id: &str,
    prepared: Vec<LeaseRef>,
) -> Result<Option<LeaseAnswer>, WorkerError> {
    let path = format!("/v1/workers/{}/lease", encode_segment(&shared.worker_id));
    let wait = Duration::from_millis(shared.config.batch_wait_ms);
    let (status, body) = call_until_answered(
        &shared.client,
        Method::POST,
        &path,
        &LeaseRequest {
            wait_ms: shared.config.batch_wait_ms,
            prepared,
        },
        request_id,
        Some(wait),
        None,
    )
    .await
    .map_err(|e| WorkerError::coordinator(format!("POST {path}"), e))?;
    if status == StatusCode::NO_CONTENT || body.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        WorkerError::coordinator(
            format!("POST {path}"),
            idunno_api::ClientError::Protocol(format!("bad lease answer: {e}")),
        )
    })
}

/// Fetches a lease's inputs straight from storage nodes and decodes them (off the async
/// threads). Inputs that cannot be read or decoded carry the reason instead of an image.
async fn prepare(shared: &Shared, lease: Lease) -> PreparedBatch {
    let leased_at = Instant::now();
    let fetched = shared.inputs.fetch_all(&lease.inputs).await;
    let names: Vec<String> = lease.inputs.iter().map(|i| i.name.clone()).collect();
    let decoding = Instant::now();
    // Decoding runs on the compute pool, not on a thread of its own (a third runnable thread
    // preempting one of the pool's stalls the pass's fork-joins); fewer images than compute
    // threads, beside the pass in progress rather than inside it (`ComputePool::run_side`;
    // `docs/BENCHMARKS.md`, workers, measures both).
    let pieces = fetched.len();
    let decoded = shared
        .pool
        .run_side(pieces, move || {
            fetched
                .into_par_iter()
                .zip(names)
                .map(|(bytes, name)| match bytes {
                    Ok(bytes) => inputs::decode(&bytes, &name),
                    Err(e) => Err(e.to_string()),
                })
                .collect::<Vec<_>>()
        })
        .await;
    shared
        .metrics
        .decoded(&lease.model, "job", decoding.elapsed());
    let images = decoded.unwrap_or_else(|e| {
        lease
            .inputs
            .iter()
            .map(|_| Err(format!("decoding failed: {e}")))
            .collect()
    });
    tracing::debug!(
        batch = %lease.batch_id,
        ms = leased_at.elapsed().as_millis() as u64,
        "inputs fetched and decoded"
    );
    PreparedBatch {
        lease,
        images,
        leased_at,
    }
}
