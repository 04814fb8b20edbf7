//! The worker's own small HTTP listener (`--listen`, port 0 picks a free one): `/healthz`,
//! `/readyz` (200 once a model is loaded, 503 before) and `/metrics` ([`crate::metrics`]).
//! Open without credentials, like the coordinators' and storage nodes' own.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::shared::Shared;

/// The listener's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(from_fn_with_state(shared.clone(), count))
        .with_state(shared)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({"status": "ok", "worker": shared.worker_id})).into_response()
}

/// Ready once a model is loaded (a worker with none would make its first batch wait).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let loaded = shared.models.loaded();
    if loaded.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "no model loaded yet", "code": "unavailable"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ready", "loaded": loaded})).into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let m = &shared.metrics;
    m.update_busy();
    m.models_loaded.set(shared.models.loaded().len() as i64);
    idunno_server::metrics::render(&m.registry)
}

async fn count(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    shared
        .metrics
        .http
        .record(&method, resp.status(), started.elapsed());
    resp
}
