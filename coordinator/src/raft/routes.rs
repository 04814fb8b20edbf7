//! The server side of the Raft transport (`/raft/…`): hands peers' RPCs to openraft and
//! answers with its `Result` as JSON. Bodies have their own limit, apart from the client API's. Also the read-index call followers use for
//! linearizable reads.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::links::NODE_HEADER;
use super::network::decode_snapshot_chunk;
use super::{Node, NodeId, TypeConfig};
use crate::auth::SECRET_HEADER;
use crate::error::{ApiError, ApiJson};
use crate::node::Coordinator;

/// The routes, to be merged at the root, with their own body limit (`--raft-body-limit`).
pub fn router(body_limit: usize) -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/read-index", post(read_index))
        .layer(DefaultBodyLimit::max(body_limit))
}

async fn append(
    State(c): State<Arc<Coordinator>>,
    ApiJson(req): ApiJson<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(c.raft.append_entries(req).await)
}

async fn vote(
    State(c): State<Arc<Coordinator>>,
    ApiJson(req): ApiJson<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(c.raft.vote(req).await)
}

/// Refuses every request from a peer whose link is cut (fault injection), before it is read.
pub async fn refuse_cut_links(
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

/// A snapshot chunk, its bytes raw after a JSON header ([`decode_snapshot_chunk`]).
async fn snapshot(
    State(c): State<Arc<Coordinator>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<
    Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>,
    ApiError,
> {
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(r.body_text()),
        _ => ApiError::BadRequest(r.body_text()),
    })?;
    let req = decode_snapshot_chunk(&body).map_err(ApiError::BadRequest)?;
    Ok(Json(c.raft.install_snapshot(req).await))
}

/// The leader's answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndex {
    /// Index the reader must have applied before reading (`None`: nothing committed yet).
    pub index: Option<u64>,
}

async fn read_index(
    State(c): State<Arc<Coordinator>>,
) -> Json<Result<ReadIndex, RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>>> {
    Json(c.raft.get_read_log_id().await.map(|(read, _)| ReadIndex {
        index: read.map(|l| l.index),
    }))
}

/// Asks the leader at `leader_addr` for its read index.
pub async fn fetch_read_index(c: &Coordinator, leader_addr: &str) -> Result<Option<u64>, ApiError> {
    let url = format!(
        "{}/raft/read-index",
        idunno_api::client::base_url(leader_addr)
    );
    if c.leader().is_some_and(|(id, _)| c.links.is_cut(id)) {
        return Err(ApiError::NoLeader("the link to the leader is cut".into()));
    }
    let mut req = c
        .http
        .post(&url)
        .header(NODE_HEADER, c.id.to_string())
        .timeout(std::time::Duration::from_millis(
            c.config.election_max_ms * 4,
        ));
    if let Some(secret) = &c.config.cluster_secret {
        req = req.header(SECRET_HEADER, secret);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ApiError::NoLeader(format!("leader unreachable for a read index: {e}")))?;
    let answer: Result<ReadIndex, RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>> = resp
        .json()
        .await
        .map_err(|e| ApiError::NoLeader(format!("bad read-index answer: {e}")))?;
    answer
        .map(|r| r.index)
        .map_err(|e| ApiError::NoLeader(format!("leader could not confirm a read: {e}")))
}
