//! `/v1/jobs`: create, list, show, change, start, stop and delete inference jobs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use idunno_api::job::{BatchInfo, Job, JobPatch, JobStats, NewJob};
use idunno_api::result::{BatchResult, QueryResult};

use super::{request_id, ReadOptions};
use crate::app::Coordinator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::proposer::now_ms;
use crate::replicas::download::{read_all, ReadPlan};
use crate::replicas::placement::replicas_in_read_order;
use crate::state::command::{Command, Response};
use crate::state::jobs::{validate_batch_size, validate_weight, BatchState};

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/v1/jobs", get(list).post(create))
        .route("/v1/jobs/{id}", get(show).patch(update).delete(remove))
        .route("/v1/jobs/{id}/start", post(start))
        .route("/v1/jobs/{id}/stop", post(stop))
        .route("/v1/jobs/{id}/batches", get(batches))
        .route("/v1/jobs/{id}/stats", get(stats))
        .route("/v1/jobs/{id}/results", get(results))
}

/// The API view of a job, with its rate (derived from replicated records: any node).
fn view(c: &Coordinator, id: u64) -> Result<Job, ApiError> {
    let applied = c.shared.read();
    let record = applied.state.job(id)?;
    Ok(record.to_api(applied.state.job_rate(record, now_ms())))
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

/// C1, C2 and C5 of one job, the same from every coordinator (derived from the replicated
/// batch records).
async fn stats(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<Json<JobStats>, ApiError> {
    c.read_barrier(opts.stale).await?;
    Ok(Json(c.shared.read().state.job_stats_view(id, now_ms())?))
}

/// `GET /v1/jobs/{id}/batches` options: `?stale=true`, `?state=pending|leased|done`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchQuery {
    #[serde(default)]
    stale: bool,
    #[serde(default)]
    state: Option<BatchFilter>,
}

/// Which batches to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum BatchFilter {
    Pending,
    Leased,
    Done,
}

async fn batches(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<BatchQuery>,
) -> Result<Json<Vec<BatchInfo>>, ApiError> {
    c.read_barrier(query.stale).await?;
    let applied = c.shared.read();
    applied.state.job(id)?;
    let wanted = |b: &BatchState| match query.state {
        None => true,
        Some(BatchFilter::Pending) => matches!(b, BatchState::Pending),
        Some(BatchFilter::Leased) => matches!(b, BatchState::Leased { .. }),
        Some(BatchFilter::Done) => matches!(b, BatchState::Done { .. }),
    };
    Ok(Json(
        applied
            .state
            .batches_of(id)
            .filter(|b| wanted(&b.state))
            .map(|b| b.to_api())
            .collect(),
    ))
}

/// The results of every done batch, in input order, as one JSON array of query results,
/// streamed batch by batch. `x-idunno-complete` says whether every query is in it.
async fn results(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<axum::response::Response, ApiError> {
    c.read_barrier(opts.stale).await?;
    let (mut done, complete) = {
        let applied = c.shared.read();
        let job = applied.state.job(id)?;
        let done: Vec<(u64, u32, String)> = applied
            .state
            .batches_of(id)
            .filter_map(|b| match &b.state {
                BatchState::Done { result, .. } => Some((b.start, b.len, result.clone())),
                _ => None,
            })
            .collect();
        (done, job.done >= job.queries)
    };
    done.sort();
    let c2 = c.clone();
    let items = futures::stream::iter(done)
        .then(move |(start, len, name)| {
            let c = c2.clone();
            async move { batch_results(&c, id, start, len, &name).await }
        })
        .flat_map(futures::stream::iter);
    let mut first = true;
    let body =
        futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"[")) })
            .chain(items.map(move |r| {
                let mut line = if first { Vec::new() } else { b",".to_vec() };
                first = false;
                line.extend(serde_json::to_vec(&r).unwrap_or_default());
                Ok(bytes::Bytes::from(line))
            }))
            .chain(futures::stream::once(async {
                Ok(bytes::Bytes::from_static(b"]"))
            }));
    let mut resp = axum::response::Response::new(axum::body::Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        idunno_api::headers::COMPLETE_HEADER,
        axum::http::HeaderValue::from_static(if complete { "true" } else { "false" }),
    );
    Ok(resp)
}

/// One batch's query results from its results object; error results if it cannot be read.
async fn batch_results(
    c: &Coordinator,
    job: u64,
    start: u64,
    len: u32,
    name: &str,
) -> Vec<QueryResult> {
    let read = async {
        let plan = {
            let applied = c.shared.read();
            let state = &applied.state;
            let v = state.version(name, None)?;
            ReadPlan {
                name: name.to_string(),
                version: v.version,
                hash: v.hash.clone(),
                size: v.size,
                replicas: replicas_in_read_order(state, &v.hash)
                    .into_iter()
                    .map(|(_, addr, _)| addr)
                    .collect(),
            }
        };
        let bytes = read_all(&c.nodes, plan).await?;
        match serde_json::from_slice::<BatchResult>(&bytes) {
            Ok(batch) if batch.job_id == job => Ok(batch),
            Ok(batch) => Err(ApiError::Conflict(format!(
                "{name} belongs to job {}",
                batch.job_id
            ))),
            Err(e) => Err(ApiError::Internal(format!(
                "{name} is not a batch result: {e}"
            ))),
        }
    };
    match read.await {
        Ok(batch) => {
            let mut results = batch.results;
            results.sort_by_key(|r| r.index);
            results
        }
        Err(e) => {
            let inputs = c.shared.read().state.inputs_of(job).cloned();
            (start..start + u64::from(len))
                .map(|index| QueryResult {
                    index,
                    input: inputs
                        .as_ref()
                        .and_then(|i| i.get(index as usize).cloned())
                        .unwrap_or_default(),
                    top: Vec::new(),
                    error: Some(format!("result unavailable: {e}")),
                })
                .collect()
        }
    }
}
