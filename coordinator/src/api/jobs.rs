//! `/v1/jobs`: create, list, show, change, start, stop and delete inference jobs.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use idunno_api::job::{BatchInfo, Job, JobPatch, NewJob};

use super::{request_id, ReadOptions};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::node::Coordinator;
use crate::state::command::{Command, Response};
use crate::state::jobs::{validate_batch_size, validate_weight};

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/v1/jobs", get(list).post(create))
        .route("/v1/jobs/{id}", get(show).patch(update).delete(remove))
        .route("/v1/jobs/{id}/start", post(start))
        .route("/v1/jobs/{id}/stop", post(stop))
        .route("/v1/jobs/{id}/batches", get(batches))
}

/// The API view of a job, with its rate if this node leads.
fn view(c: &Coordinator, id: u64) -> Result<Job, ApiError> {
    let applied = c.shared.read();
    let record = applied.state.job(id)?;
    let rate = if c.is_leader() {
        c.leader_state().fair.rate(id, Instant::now())
    } else {
        0.0
    };
    Ok(record.to_api(rate))
}

/// Commits a job command and answers with the job as it is afterwards.
async fn write_and_view(
    c: &Coordinator,
    headers: &HeaderMap,
    cmd: Command,
) -> Result<Job, ApiError> {
    match c.write(request_id(headers), cmd).await? {
        Response::Job { id } => view(c, id),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

async fn create(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewJob>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    validate_batch_size(body.batch_size)?;
    validate_weight(body.weight)?;
    let cmd = Command::CreateJob {
        name: body.name,
        model: body.model,
        inputs: body.inputs,
        batch_size: body.batch_size,
        weight: body.weight,
        start: body.start,
    };
    let job = write_and_view(&c, &headers, cmd).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

async fn list(
    State(c): State<Arc<Coordinator>>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<Json<Vec<Job>>, ApiError> {
    c.read_barrier(opts.stale).await?;
    let ids: Vec<u64> = c.shared.read().state.jobs.keys().copied().collect();
    Ok(Json(
        ids.into_iter().filter_map(|id| view(&c, id).ok()).collect(),
    ))
}

async fn show(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<Json<Job>, ApiError> {
    c.read_barrier(opts.stale).await?;
    Ok(Json(view(&c, id)?))
}

async fn update(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<u64>,
    ApiJson(patch): ApiJson<JobPatch>,
) -> Result<Json<Job>, ApiError> {
    if patch.batch_size.is_none() && patch.weight.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give batch_size and/or weight".into(),
        ));
    }
    let cmd = Command::UpdateJob {
        job: id,
        batch_size: patch.batch_size,
        weight: patch.weight,
    };
    Ok(Json(write_and_view(&c, &headers, cmd).await?))
}

async fn start(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(
        write_and_view(&c, &headers, Command::StartJob { job: id }).await?,
    ))
}

async fn stop(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(
        write_and_view(&c, &headers, Command::StopJob { job: id }).await?,
    ))
}

async fn remove(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<u64>,
) -> Result<StatusCode, ApiError> {
    c.write(request_id(&headers), Command::DeleteJob { job: id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn batches(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<Json<Vec<BatchInfo>>, ApiError> {
    c.read_barrier(opts.stale).await?;
    let applied = c.shared.read();
    applied.state.job(id)?;
    Ok(Json(
        applied.state.batches_of(id).map(|b| b.to_api()).collect(),
    ))
}
