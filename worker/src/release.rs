//! Giving a lease back: a batch the worker leased but will not run (stopping, revoked, its
//! model cannot load now, its results could not be written or reported) goes back to the
//! queue at once instead of waiting out the lease.

use std::time::Duration;

use idunno_api::worker::{Lease, Release};
use reqwest::Method;

use crate::coordinator::{call_until_answered, encode_segment};
use crate::shared::Shared;

/// How long giving a lease back keeps trying coordinators that are down or failing.
const RELEASE_DEADLINE: Duration = Duration::from_secs(15);

/// Gives back a lease that was not (or could not be) run: `POST /v1/workers/{id}/release`,
/// one request id, retried on every coordinator (5xx included) for [`RELEASE_DEADLINE`].
/// Best effort: if no coordinator takes it, the lease expires on its own (the worker no
/// longer lists it as held either way).
pub(crate) async fn release(shared: &Shared, lease: &Lease) {
    release_once(shared, lease).await;
    shared.holding.remove(lease.lease_id);
}

async fn release_once(shared: &Shared, lease: &Lease) {
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
