//! The worker's stop signal: a `watch` channel that turns `true` once, when the worker stops
//! taking work (SIGTERM, or `WorkerHandle::stop`).

use tokio::sync::watch;

/// Resolves once the worker stops taking work (at once if it already has).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in a caller's `select!`.
    let _ = stop.wait_for(|s| *s).await;
}
