//! Online batches: single inference requests the leader batched ([`OnlineLease`]), with
//! their inputs inline. [`start`] decodes them on the compute pool and queues the batch
//! ahead of any prepared job batch; [`run`] (from a compute slot) runs the network and sends
//! every image's logits and top classes to the leader (`POST /v1/online/{batch}/complete`)
//! in the background. Nothing goes to SDFS. A batch whose answer is lost is run again
//! elsewhere by the leader once this worker goes silent; an answer the leader no longer
//! wants is dropped there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::D;
use idunno_api::online::{Base64, OnlineCompletion, OnlineInput, OnlineLease, OnlineOutput};
use idunno_api::result::Class;
use idunno_models::{Model, Tensor};
use rayon::prelude::*;
use reqwest::Method;

use crate::coordinator::{call_until_answered, encode_segment};
use crate::inputs;
use crate::lanes::Running;
use crate::model_cache::ModelSpec;
use crate::queue::{OnlineBatch, OnlineImage};
use crate::shared::Shared;

/// How long the worker keeps trying to hand in an online batch's outputs (the request is
/// waiting on them; after this the leader will have run it elsewhere).
const REPORT_DEADLINE: Duration = Duration::from_secs(10);

/// Decodes `lease`'s inputs in the background, then queues the batch to run next.
pub(crate) fn start(shared: &Arc<Shared>, mut lease: OnlineLease) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let received = Instant::now();
        let size = lease.input_size as usize;
        let inputs = std::mem::take(&mut lease.inputs);
        let count = inputs.len();
        let images = shared
            .pool
            .run_side(count, move || {
                inputs.into_par_iter().map(|i| prepare(i, size)).collect()
            })
            .await;
        shared
            .metrics
            .decoded(&lease.model, "online", received.elapsed());
        let images = images.unwrap_or_else(|e| {
            (0..count)
                .map(|_| Err(format!("decoding failed: {e}")))
                .collect()
        });
        tracing::debug!(batch = %lease.batch_id, ms = received.elapsed().as_millis() as u64, "online batch decoded");
        shared.queue.push_online(OnlineBatch { lease, images });
    });
}

/// One input, decoded (an image) or checked (a tensor of `3 × size × size` values).
fn prepare(input: OnlineInput, size: usize) -> Result<OnlineImage, String> {
    match input {
        OnlineInput::Image { data } => inputs::decode(&data.0, "").map(OnlineImage::Decoded),
        OnlineInput::Tensor { data } => {
            let values = data.to_f32s()?;
            if values.len() != 3 * size * size {
                return Err(format!(
                    "a preprocessed image has 3 × {size} × {size} values, not {}",
                    values.len()
                ));
            }
            Ok(OnlineImage::Tensor(values))
        }
    }
}

/// Runs an online batch (loading its model if need be) and reports its outputs.
pub(crate) async fn run(shared: &Arc<Shared>, batch: OnlineBatch, mut lane: Running<'_>) {
    let OnlineBatch { lease, images } = batch;
    let started = Instant::now();
    // An online batch's compute time counts its model's loading, if any (the request waited
    // on it).
    lane.compute();
    let model = match ModelSpec::from_online(&lease) {
        Ok(spec) => shared.models.get(&spec).await,
        Err(e) => Err(e),
    };
    let count = images.len();
    let outputs = match model {
        Ok(model) => {
            let (size, k) = (lease.input_size as usize, lease.top_k as usize);
            shared
                .pool
                .run_pass(move || outputs(&model, images, size, k))
                .await
                .unwrap_or_else(|e| vec![failed(e.to_string(), false); count])
        }
        Err(e) => {
            let reason = format!("model {} cannot be loaded: {e}", lease.model);
            images
                .iter()
                .map(|_| failed(reason.clone(), false))
                .collect()
        }
    };
    let took = started.elapsed();
    let share = lane.finish();
    let compute_ms = share.as_millis() as u64;
    shared
        .metrics
        .ran(&lease.model, "online", count, took, share);
    tracing::debug!(batch = %lease.batch_id, images = outputs.len(), compute_ms, "online batch computed");
    let shared = shared.clone();
    tokio::spawn(async move { report(&shared, &lease.batch_id, outputs, compute_ms).await });
}

fn failed(reason: String, bad_input: bool) -> OnlineOutput {
    OnlineOutput {
        logits: None,
        top: Vec::new(),
        error: Some(reason),
        bad_input,
    }
}

/// Every image's logits and top `k` classes (or why it has none), in input order: the
/// usable images are stacked into one `(N, 3, S, S)` batch for one forward pass.
fn outputs(
    model: &Model,
    images: Vec<Result<OnlineImage, String>>,
    size: usize,
    k: usize,
) -> Vec<OnlineOutput> {
    let tensors: Vec<Result<Tensor, String>> = images
        .into_par_iter()
        .map(|image| match image? {
            OnlineImage::Decoded(image) => model
                .preprocess(&image)
                .map_err(|e| format!("cannot preprocess: {e}")),
            OnlineImage::Tensor(values) => {
                Tensor::from_vec(values, (3, size, size), model.device())
                    .map_err(|e| format!("not a [3, {size}, {size}] tensor: {e}"))
            }
        })
        .collect();
    let usable: Vec<&Tensor> = tensors.iter().filter_map(|t| t.as_ref().ok()).collect();
    let rows = match forward(model, &usable, k) {
        Ok(rows) => rows,
        Err(e) => {
            let reason = format!("forward pass failed: {e}");
            return tensors
                .iter()
                .map(|t| match t {
                    Ok(_) => failed(reason.clone(), false),
                    Err(e) => failed(e.clone(), true),
                })
                .collect();
        }
    };
    let mut rows = rows.into_iter();
    tensors
        .into_iter()
        .map(|t| match t {
            Ok(_) => rows
                .next()
                .unwrap_or_else(|| failed("the network returned too few rows".into(), false)),
            Err(e) => failed(e, true),
        })
        .collect()
}

/// Stack, forward; each row's logits and top `k` classes by softmax probability.
fn forward(
    model: &Model,
    tensors: &[&Tensor],
    k: usize,
) -> Result<Vec<OnlineOutput>, idunno_models::ModelError> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let logits = model.forward(&Tensor::stack(tensors, 0)?)?;
    let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
    let logits = logits.to_vec2::<f32>()?;
    Ok(logits
        .iter()
        .zip(&probs)
        .map(|(l, p)| OnlineOutput {
            logits: Some(Base64::from_f32s(l)),
            top: idunno_models::top_k(p, k)
                .into_iter()
                .map(Class::from)
                .collect(),
            error: None,
            bad_input: false,
        })
        .collect())
}

/// Hands the outputs to the leader (any coordinator forwards them), retrying through an
/// election for up to [`REPORT_DEADLINE`].
async fn report(shared: &Shared, batch_id: &str, outputs: Vec<OnlineOutput>, compute_ms: u64) {
    let path = format!("/v1/online/{}/complete", encode_segment(batch_id));
    let body = OnlineCompletion {
        worker: shared.worker_id.clone(),
        outputs,
        compute_ms,
    };
    let request_id = idunno_api::client::new_request_id();
    let answer = call_until_answered(
        &shared.client,
        Method::POST,
        &path,
        &body,
        &request_id,
        None,
        Some(REPORT_DEADLINE),
    )
    .await;
    match answer {
        Ok(_) => tracing::debug!(batch = %batch_id, "online outputs handed in"),
        Err(e) => tracing::warn!(batch = %batch_id, error = %e, "online outputs not handed in"),
    }
}
