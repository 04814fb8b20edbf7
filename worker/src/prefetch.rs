//! Prefetch: the task that long-polls the coordinators for leases and gets each batch ready
//! (inputs fetched from storage nodes, then decoded on the compute pool) while the compute
//! loop runs the previous one, so the worker never waits on the network between batches.
//!
//! The queue between the two holds one batch. The task asks for a lease only once the queue
//! has room, so a worker holds at most its batches in compute plus one prepared batch. When
//! the worker stops, a lease in hand that was not started is given back (`release`), and its
//! batch goes to the next free worker first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idunno_api::worker::{Lease, LeaseRequest, Release};
use image::DynamicImage;
use rayon::prelude::*;
use reqwest::{Method, StatusCode};
use tokio::sync::mpsc;

use crate::coordinator::{call_until_answered, encode_segment};
use crate::error::WorkerError;
use crate::inputs;
use crate::runtime::{stopped, Shared};

/// Pause after a lease call failed with a definite error (e.g. 4xx), before the next one.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// How long giving a lease back keeps trying coordinators that are down or failing.
const RELEASE_DEADLINE: Duration = Duration::from_secs(15);

/// A leased batch whose inputs are fetched and decoded: ready for the network.
pub(crate) struct PreparedBatch {
    pub lease: Lease,
    /// One entry per `lease.inputs`, same order: the image, or why there is none.
    pub images: Vec<Result<DynamicImage, String>>,
    /// When the lease arrived (how long a batch waited is a tracing figure).
    pub leased_at: Instant,
}

/// The prefetch loop; returns when the worker stops (or the compute side is gone), after
/// giving back any lease it holds.
pub(crate) async fn prefetch_loop(shared: Arc<Shared>, queue: mpsc::Sender<PreparedBatch>) {
    let mut stop = shared.stop.clone();
    loop {
        // Wait for room: the compute loop has taken the previous batch.
        let permit = tokio::select! {
            permit = queue.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stopped(&mut stop) => return,
        };
        // A lease call cancelled here may still have been granted; deregistration on stop
        // makes the coordinator expire it at once.
        let lease = tokio::select! {
            lease = next_lease(&shared) => lease,
            _ = stopped(&mut stop) => return,
        };
        let lease = match lease {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "lease call failed");
                tokio::select! {
                    _ = tokio::time::sleep(ERROR_PAUSE) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
        };
        tracing::debug!(batch = %lease.batch_id, lease = lease.lease_id, inputs = lease.inputs.len(), "leased");
        shared.stats.record_lease();
        let prepared = tokio::select! {
            prepared = prepare(&shared, lease.clone()) => prepared,
            _ = stopped(&mut stop) => {
                release(&shared, &lease).await;
                return;
            }
        };
        permit.send(prepared);
    }
}

/// One long poll for a batch: `Some(lease)`, or `None` when none came up within the wait.
/// The request id is kept until a coordinator answers, so a lost answer is not a lost lease.
async fn next_lease(shared: &Shared) -> Result<Option<Lease>, WorkerError> {
    let path = format!("/v1/workers/{}/lease", encode_segment(&shared.worker_id));
    let wait = Duration::from_millis(shared.config.batch_wait_ms);
    let request_id = idunno_api::client::new_request_id();
    let (status, body) = call_until_answered(
        &shared.client,
        Method::POST,
        &path,
        &LeaseRequest {
            wait_ms: shared.config.batch_wait_ms,
        },
        &request_id,
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
            idunno_api::ClientError::Protocol(format!("bad lease: {e}")),
        )
    })
}

/// Fetches a lease's inputs straight from storage nodes and decodes them (off the async
/// threads). Inputs that cannot be read or decoded carry the reason instead of an image.
async fn prepare(shared: &Shared, lease: Lease) -> PreparedBatch {
    let leased_at = Instant::now();
    let fetched = shared.inputs.fetch_all(&lease.inputs).await;
    let names: Vec<String> = lease.inputs.iter().map(|i| i.name.clone()).collect();
    // Decoding runs as a job of the compute pool, not on a thread of its own: the pool's
    // threads take it up between the forward pass's tasks, so the cores never hold more
    // runnable compute threads than they have (a third thread preempting one of the pool's
    // stalls the pass's fork-joins; `docs/BENCHMARKS.md`, workers, measures the difference).
    let decoded = shared
        .pool
        .run(move || {
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

/// Gives back a lease that was not (or could not be) run: `POST /v1/workers/{id}/release`,
/// one request id, retried on every coordinator (5xx included) for [`RELEASE_DEADLINE`].
/// Best effort: if no coordinator takes it, the lease expires on its own.
pub(crate) async fn release(shared: &Shared, lease: &Lease) {
    let path = format!("/v1/workers/{}/release", encode_segment(&shared.worker_id));
    let body = Release {
        lease_id: lease.lease_id,
        batch_id: lease.batch_id.clone(),
    };
    let request_id = idunno_api::client::new_request_id();
    match call_until_answered(
        &shared.client,
        Method::POST,
        &path,
        &body,
        &request_id,
        None,
        Some(RELEASE_DEADLINE),
    )
    .await
    {
        Ok(_) => {
            shared.stats.record_release();
            tracing::info!(batch = %lease.batch_id, lease = lease.lease_id, "lease given back");
        }
        // 404/409: the batch is gone, done, or no longer this lease's; nothing to give back.
        Err(e) if matches!(e.status(), Some(404 | 409)) => {
            tracing::debug!(batch = %lease.batch_id, error = %e, "lease no longer current; nothing to give back")
        }
        Err(e) => {
            tracing::warn!(batch = %lease.batch_id, error = %e, "cannot give the lease back; it will expire")
        }
    }
}
