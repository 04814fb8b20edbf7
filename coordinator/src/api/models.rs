//! `/v1/models`: register, list, show and delete models.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use idunno_api::model::{Model, NewModel};

use super::{request_id, ReadOptions};
use crate::app::Coordinator;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::state::command::{Command, Response};
use crate::state::models::{validate, validate_online, ModelRecord};

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/v1/models", get(list).post(create))
        .route("/v1/models/{name}", get(show).delete(remove))
        .route("/v1/models/{name}/load", axum::routing::post(load))
}

/// Workers that reported `model` loaded to this node (workers heartbeat every coordinator).
fn loaded_on(c: &Coordinator, model: &str) -> Vec<String> {
    c.workers().with_model(model, c.config.lease_timeout())
}

/// The API view: the record, the workers that have it loaded, the cost estimate.
fn view(c: &Coordinator, m: &ModelRecord) -> Model {
    let cost = c.shared.read().state.cost_ms_per_query(&m.name);
    m.to_api(loaded_on(c, &m.name), cost)
}

async fn create(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewModel>,
) -> Result<(StatusCode, Json<Model>), ApiError> {
    let input_size = body.input_size.unwrap_or(body.arch.input_size() as u32);
    validate(
        &body.name,
        body.arch,
        &body.weights,
        input_size,
        body.cost_ms,
    )?;
    validate_online(&body.online)?;
    let cmd = Command::PutModel {
        name: body.name,
        arch: body.arch,
        weights: body.weights,
        input_size,
        cost_ms: body.cost_ms,
        online: body.online,
    };
    match c.write(request_id(&headers), cmd).await? {
        Response::Model(m) => Ok((StatusCode::CREATED, Json(view(&c, &m)))),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

async fn list(
    State(c): State<Arc<Coordinator>>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<Json<Vec<Model>>, ApiError> {
    c.read_barrier(opts.stale).await?;
    let models: Vec<_> = c.shared.read().state.models.values().cloned().collect();
    Ok(Json(models.iter().map(|m| view(&c, m)).collect()))
}

async fn show(
    State(c): State<Arc<Coordinator>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(opts): ApiQuery<ReadOptions>,
) -> Result<Json<Model>, ApiError> {
    c.read_barrier(opts.stale).await?;
    let model = c.shared.read().state.models.get(&name).cloned();
    let model = model.ok_or_else(|| ApiError::NotFound(format!("no model named {name:?}")))?;
    Ok(Json(view(&c, &model)))
}

async fn remove(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    c.write(request_id(&headers), Command::DeleteModel { name })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Asks every worker to load the model now (heartbeat answers carry the request).
async fn load(
    State(c): State<Arc<Coordinator>>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Model>, ApiError> {
    match c
        .write(request_id(&headers), Command::LoadModel { name })
        .await?
    {
        Response::Model(m) => Ok(Json(view(&c, &m))),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}
