//! The server side of the Raft transport (`/raft/…`): hands peers' RPCs to openraft and
//! answers with its `Result` as JSON; also the read-index call followers use for linearizable
//! reads. Bodies have their own limit, apart from the client API's. It needs the Raft handle
//! and nothing else of the coordinator.

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

use super::network::decode_snapshot_chunk;
use super::{Node, NodeId, Raft, ReadIndex, TypeConfig};
use crate::error::{ApiError, ApiJson};

/// The routes, to be merged at the root (whatever its state), with their own body limit
/// (`--raft-body-limit`).
pub fn router<S: Clone + Send + Sync + 'static>(raft: Raft, body_limit: usize) -> Router<S> {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/read-index", post(read_index))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(raft)
}

async fn append(
    State(raft): State<Raft>,
    ApiJson(req): ApiJson<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.append_entries(req).await)
}

async fn vote(
    State(raft): State<Raft>,
    ApiJson(req): ApiJson<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.vote(req).await)
}

/// A snapshot chunk, its bytes raw after a JSON header ([`decode_snapshot_chunk`]).
async fn snapshot(
    State(raft): State<Raft>,
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
    Ok(Json(raft.install_snapshot(req).await))
}

async fn read_index(
    State(raft): State<Raft>,
) -> Json<Result<ReadIndex, RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>>> {
    Json(raft.get_read_log_id().await.map(|(read, _)| ReadIndex {
        index: read.map(|l| l.index),
    }))
}
