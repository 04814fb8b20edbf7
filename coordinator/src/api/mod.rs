//! The coordinator's REST API (`/v1/…`), health and metrics endpoints, assembled into one
//! axum router with its middleware: request counting, auth, forwarding to the leader.

mod cluster;
mod files;
mod health;
mod jobs;
mod lease;
mod models;
mod nodes;
mod online;
mod v2;
mod worker_id;
mod workers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::Router;
use serde::Deserialize;

use idunno_api::headers::NODE_HEADER;

use crate::app::Coordinator;
use crate::error::ApiError;

/// Every route of a coordinator.
pub fn router(c: Arc<Coordinator>) -> Router {
    Router::new()
        .merge(health::router())
        .merge(models::router())
        .merge(jobs::router())
        .merge(workers::router())
        .merge(cluster::router())
        .merge(files::router())
        .merge(nodes::router())
        .merge(online::router())
        .merge(v2::router())
        // The Raft transport has its own body limit (it wins over the one below): a log
        // entry can hold a whole client request, and an append carries several entries.
        .merge(crate::raft::routes::router(
            c.raft.clone(),
            c.config.raft_body_limit,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(c.clone(), crate::forward::to_leader))
        .layer(from_fn_with_state(c.clone(), crate::auth::check))
        .layer(from_fn_with_state(c.clone(), count))
        .layer(DefaultBodyLimit::max(c.config.body_limit))
        .layer(from_fn_with_state(c.clone(), refuse_cut_links))
        .with_state(c)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

async fn count(State(c): State<Arc<Coordinator>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    c.metrics
        .http
        .record(&method, resp.status(), started.elapsed());
    resp
}

/// `?stale=true` reads this node's copy without a linearizability check.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOptions {
    #[serde(default)]
    pub stale: bool,
}

/// The client's request id for a write (`Idempotency-Key`), or a fresh one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(idunno_api::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(idunno_api::client::new_request_id)
}

/// Refuses every request from a peer whose link is cut (fault injection), before it is read.
async fn refuse_cut_links(
    State(c): State<Arc<Coordinator>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let sender = req.headers().get(NODE_HEADER).and_then(|v| v.to_str().ok());
    if c.links.refuses(sender) {
        return axum::response::IntoResponse::into_response(ApiError::Unavailable(
            "the link from that node is cut".into(),
        ));
    }
    next.run(req).await
}
