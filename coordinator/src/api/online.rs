//! `POST /v1/online/{batch}/complete`: a worker's outputs for an online batch, which the
//! leader hands to the requests waiting for them ([`crate::online`]).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use idunno_api::online::OnlineCompletion;
use idunno_api::worker::CompletionAck;

use super::worker_id::check_worker_id;
use crate::app::Coordinator;
use crate::error::{ApiError, ApiJson, ApiPath};

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new().route("/v1/online/{batch}/complete", post(complete))
}

/// `accepted: false` when the batch is not running here any more (answered, put back after
/// the worker went silent, or handed out by an earlier leader): the outputs are dropped.
async fn complete(
    State(c): State<Arc<Coordinator>>,
    ApiPath(batch): ApiPath<String>,
    ApiJson(body): ApiJson<OnlineCompletion>,
) -> Result<Json<CompletionAck>, ApiError> {
    check_worker_id(&body.worker)?;
    c.workers().seen(&body.worker);
    let accepted = c
        .online
        .complete(&batch, &body.worker, body.outputs)
        .map_err(ApiError::BadRequest)?;
    Ok(Json(CompletionAck { accepted }))
}
