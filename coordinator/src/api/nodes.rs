//! `/v1/nodes`: storage nodes register and heartbeat here (served by the leader); anyone can
//! list them and what each one stores (the original system's `store`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use idunno_api::file::{FileVersion, NodeHeartbeat, NodeRegistration, StorageNode};

use super::ReadOptions;
use crate::app::Coordinator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::state::command::Command;
use crate::state::files::{validate_hash, validate_node_id};
use crate::state::State as Namespace;

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/v1/nodes", get(list))
        .route("/v1/nodes/register", post(register))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .route("/v1/nodes/{id}/files", get(files))
}

fn view(state: &Namespace, id: &str) -> Option<StorageNode> {
    let n = state.node(id)?;
    let (blobs, bytes) = state
        .blobs()
        .filter(|b| b.replicas.contains(id))
        .fold((0, 0), |(c, s), b| (c + 1, s + b.size));
    Some(StorageNode {
        id: n.id.clone(),
        addr: n.addr.clone(),
        alive: n.alive,
        blobs,
        bytes,
    })
}

async fn list(
    State(c): State<Arc<Coordinator>>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<Json<Vec<StorageNode>>, ApiError> {
    c.read_barrier(opts.stale).await?;
    let applied = c.shared.read();
    let state = &applied.state;
    Ok(Json(
        state.nodes().filter_map(|n| view(state, &n.id)).collect(),
    ))
}

async fn register(
    State(c): State<Arc<Coordinator>>,
    ApiJson(body): ApiJson<NodeRegistration>,
) -> Result<(StatusCode, Json<StorageNode>), ApiError> {
    validate_node_id(&body.id)?;
    let addr = idunno_api::address::parse_host_port(&body.addr).map_err(ApiError::BadRequest)?;
    // A storage node at a coordinator's address would take every put there: refused.
    if let Some((member, _)) = c
        .members()
        .into_iter()
        .find(|(_, at)| at.eq_ignore_ascii_case(&addr))
    {
        return Err(ApiError::Conflict(format!(
            "{addr} is coordinator {member}'s address, not a storage node's"
        )));
    }
    let id = body.id.clone();
    // Before it is alive: repair must not copy to it what it may already hold.
    c.leader_state().storage.rejoined(&id);
    c.write(String::new(), Command::RegisterNode { id: body.id, addr })
        .await?;
    {
        let mut leader = c.leader_state();
        leader.storage.heard(&id, 0, 0);
    }
    c.repair_wake.notify_one();
    tracing::info!(node = %id, "storage node registered");
    let applied = c.shared.read();
    let node =
        view(&applied.state, &id).ok_or_else(|| ApiError::Internal("node vanished".into()))?;
    Ok((StatusCode::CREATED, Json(node)))
}

async fn heartbeat(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<NodeHeartbeat>,
) -> Result<Json<serde_json::Value>, ApiError> {
    validate_node_id(&id)?;
    if c.shared.read().state.node(&id).is_none() {
        return Err(ApiError::NotFound(format!(
            "storage node {id:?} is not registered"
        )));
    }
    c.leader_state().storage.heard(&id, body.blobs, body.bytes);
    for hash in &body.lost {
        validate_hash(hash)?;
    }
    for hash in body.lost {
        tracing::warn!(node = %id, %hash, "storage node lost a blob");
        c.write(
            String::new(),
            Command::DropReplicas {
                hash,
                nodes: vec![id.clone()],
            },
        )
        .await?;
        c.repair_wake.notify_one();
    }
    Ok(Json(serde_json::json!({})))
}

async fn files(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<Json<Vec<FileVersion>>, ApiError> {
    c.read_barrier(opts.stale).await?;
    let applied = c.shared.read();
    let state = &applied.state;
    if state.node(&id).is_none() {
        return Err(ApiError::NotFound(format!("no storage node {id:?}")));
    }
    let mut out = Vec::new();
    for path in state.files_under("") {
        if let Ok(file) = state.file(&path) {
            for v in &file.versions {
                if state
                    .blob(&v.hash)
                    .is_some_and(|b| b.replicas.contains(&id))
                {
                    out.push(state.version_view(&path, v));
                }
            }
        }
    }
    Ok(Json(out))
}
