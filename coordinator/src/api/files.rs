//! `/v1/files`: SDFS over HTTP — put (streamed), get (streamed, ranges), delete, list, and
//! the original system's ls (`…/replicas`), store (`/v1/nodes/{id}/files`) and get-versions
//! (`…/versions`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use idunno_api::file::{validate_path, FileInfo, FileVersion, Replica, ReplicaSet};
use serde::Deserialize;

use super::request_id;
use crate::app::Coordinator;
use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::replicas::download::{parse_range, serve, ReadPlan};
use crate::replicas::gc::collect_garbage;
use crate::replicas::placement::replicas_in_read_order;
use crate::replicas::storage;
use crate::replicas::upload;
use crate::state::command::{Command, Response as Applied};

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new().route("/v1/files", get(list)).route(
        "/v1/files/{*path}",
        get(read)
            .put(write)
            .delete(remove)
            .layer(DefaultBodyLimit::disable()),
    )
}

/// Query parameters of the file routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// Read this version instead of the newest.
    #[serde(default)]
    pub version: Option<u64>,
    /// How many versions `…/versions` returns (newest first).
    #[serde(default)]
    pub n: Option<u32>,
    /// Replication factor of a put.
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub stale: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    stale: bool,
}

async fn list(
    State(c): State<Arc<Coordinator>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    c.read_barrier(q.stale).await?;
    let limit = q.limit.unwrap_or(10_000).min(100_000);
    let applied = c.shared.read();
    let state = &applied.state;
    Ok(Json(
        state
            .files_under(&q.prefix)
            .iter()
            .take(limit)
            .filter_map(|p| state.file(p).ok().and_then(|f| state.file_info(f)))
            .collect(),
    ))
}

/// GET dispatches on the final segment: `…/replicas`, `…/versions`, or the file itself.
async fn read(
    State(c): State<Arc<Coordinator>>,
    ApiPath(path): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    c.read_barrier(q.stale).await?;
    if let Some(name) = path.strip_suffix("/replicas") {
        return Ok(Json(replica_set(&c, name, q.version)?).into_response());
    }
    if let Some(name) = path.strip_suffix("/versions") {
        return Ok(Json(versions(&c, name, q.n)?).into_response());
    }
    validate_path(&path).map_err(ApiError::BadRequest)?;
    let plan = {
        let applied = c.shared.read();
        let state = &applied.state;
        let v = state.version(&path, q.version)?;
        ReadPlan {
            name: path.clone(),
            version: v.version,
            hash: v.hash.clone(),
            size: v.size,
            replicas: replicas_in_read_order(state, &v.hash)
                .into_iter()
                .map(|(_, addr, _)| addr)
                .collect(),
        }
    };
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = match parse_range(range_header, plan.size) {
        Ok(r) => r,
        Err(e @ ApiError::RangeNotSatisfiable(_)) => {
            let mut resp = e.into_response();
            if let Ok(v) = format!("bytes */{}", plan.size).parse() {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
        Err(e) => return Err(e),
    };
    serve(&storage(&c), plan, range).await
}

fn replica_set(c: &Coordinator, name: &str, version: Option<u64>) -> Result<ReplicaSet, ApiError> {
    let applied = c.shared.read();
    let state = &applied.state;
    let v = state.version(name, version)?;
    let target = state.blob(&v.hash).map_or(0, |b| b.target);
    Ok(ReplicaSet {
        name: name.to_string(),
        version: v.version,
        hash: v.hash.clone(),
        size: v.size,
        target,
        replicas: replicas_in_read_order(state, &v.hash)
            .into_iter()
            .map(|(node, addr, alive)| Replica { node, addr, alive })
            .collect(),
    })
}

fn versions(c: &Coordinator, name: &str, n: Option<u32>) -> Result<Vec<FileVersion>, ApiError> {
    let applied = c.shared.read();
    let state = &applied.state;
    let file = state.file(name)?;
    let n = n.map_or(file.versions.len(), |n| n as usize);
    Ok(file
        .versions
        .iter()
        .take(n)
        .map(|v| state.version_view(name, v))
        .collect())
}

async fn write(
    State(c): State<Arc<Coordinator>>,
    ApiPath(path): ApiPath<String>,
    ApiQuery(q): ApiQuery<FileQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileVersion>), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let version = upload::put(&c, &path, request_id(&headers), body, declared, q.replicas).await?;
    Ok((StatusCode::CREATED, Json(version)))
}

async fn remove(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(path): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate_path(&path).map_err(ApiError::BadRequest)?;
    match c
        .write(request_id(&headers), Command::DeleteFile { path })
        .await?
    {
        Applied::Freed { freed } => {
            collect_garbage(&c, freed);
            Ok(StatusCode::NO_CONTENT)
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}
