//! Liveness, readiness and Prometheus metrics; open without credentials.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use std::time::Duration;

use crate::app::Coordinator;
use crate::error::ApiError;
use crate::metrics::{JobLabels, ModelLabel};

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

/// Reads the gauges off the state, then renders every metric.
async fn metrics(State(c): State<Arc<Coordinator>>) -> impl IntoResponse {
    let m = &c.metrics;
    {
        let raft = c.raft.metrics();
        let raft = raft.borrow();
        m.raft_term.set(raft.current_term as i64);
        m.raft_is_leader
            .set(i64::from(raft.current_leader == Some(c.id)));
        m.raft_last_log_index
            .set(raft.last_log_index.unwrap_or(0) as i64);
        m.raft_applied_index
            .set(raft.last_applied.map_or(0, |l| l.index) as i64);
        m.raft_committed_index
            .set(c.log.committed_index().unwrap_or(0) as i64);
    }
    m.job_queries_left.clear();
    m.job_in_flight.clear();
    m.job_rate.clear();
    {
        let applied = c.shared.read();
        let now = crate::proposer::now_ms();
        for job in applied.state.running_jobs() {
            let labels = JobLabels {
                job: job.id.to_string(),
                model: job.model.clone(),
            };
            m.job_queries_left
                .get_or_create(&labels)
                .set(job.queries.saturating_sub(job.done) as i64);
            m.job_in_flight
                .get_or_create(&labels)
                .set(job.in_flight as i64);
            m.job_rate
                .get_or_create(&labels)
                .set(applied.state.job_rate(job, now));
        }
        let (missing, copies) = crate::replicas::repair::shortfall(&applied.state);
        m.replicas_missing.set(missing as i64);
        m.repair_queue.set(copies as i64);
    }
    m.online_queued.clear();
    for (model, n) in c.online.queued() {
        m.online_queued
            .get_or_create(&ModelLabel { model })
            .set(n as i64);
    }
    let alive = c
        .workers()
        .list()
        .iter()
        .filter(|w| Duration::from_millis(w.last_seen_ms_ago) < c.config.lease_timeout())
        .count();
    m.workers_alive.set(alive as i64);
    idunno_server::metrics::render(&m.registry)
}
