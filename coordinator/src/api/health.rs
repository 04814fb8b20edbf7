//! Liveness, readiness and Prometheus metrics; open without credentials.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::Coordinator;
use crate::error::ApiError;

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready = this node knows a leader, so it can serve writes (itself or by forwarding).
async fn readyz(State(c): State<Arc<Coordinator>>) -> Result<Json<Value>, ApiError> {
    match c.leader() {
        Some((id, addr)) => Ok(Json(
            json!({"status": "ready", "leader": id, "leader_addr": addr}),
        )),
        None => Err(ApiError::NoLeader("no leader known".into())),
    }
}

async fn metrics(State(c): State<Arc<Coordinator>>) -> impl IntoResponse {
    let (term, last_log, applied, leader) = {
        let m = c.raft.metrics();
        let m = m.borrow();
        (
            m.current_term as f64,
            m.last_log_index.unwrap_or(0) as f64,
            m.last_applied.map_or(0, |l| l.index) as f64,
            if m.current_leader == Some(c.id) {
                1.0
            } else {
                0.0
            },
        )
    };
    let (jobs, running) = {
        let applied = c.shared.read();
        let jobs = applied.state.jobs.len() as f64;
        let running = applied.state.runnable_jobs().count() as f64;
        (jobs, running)
    };
    let body = c.metrics.render(&[
        ("idunno_raft_term", "current Raft term", term),
        ("idunno_raft_last_log_index", "last log index", last_log),
        ("idunno_raft_applied_index", "last applied index", applied),
        ("idunno_raft_is_leader", "1 if this node leads", leader),
        ("idunno_jobs", "jobs in the state", jobs),
        (
            "idunno_jobs_runnable",
            "jobs with work to hand out",
            running,
        ),
    ]);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
