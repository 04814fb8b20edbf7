//! Running batches: the compute pool, the classification of a batch's images, and the
//! compute loop that takes prepared batches off the prefetch queue.
//!
//! All CPU work (model loading, preprocessing, the forward pass) runs on the worker's own
//! rayon pool, entered from a blocking thread, so the async threads stay free for heartbeats
//! during a long forward pass. The loop does no network I/O: inputs arrive fetched and
//! decoded ([`crate::prefetch`]), results leave through the reporter ([`crate::results`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::D;
use idunno_api::result::Class;
use image::DynamicImage;
use rayon::prelude::*;
use tokio::sync::mpsc;

use crate::lanes::Running;
use crate::model_cache::ModelSpec;
use crate::queue::{pass_size, PreparedBatch, Work};
use crate::release::release;
use crate::results::{self, Finished, QueryOutcome};
use crate::shared::Shared;
use crate::stop::stopped;
use idunno_models::{Model, ModelError, Tensor};

/// A batch whose model failed to load for a transient reason is given back, unless it has
/// already been handed out this many times: then its queries get error results, so a
/// model that can never load does not bounce its batches between workers for ever.
const MAX_ATTEMPTS_BEFORE_FAILING: u32 = 3;

/// Pause after giving a batch back, so the same worker does not lease it again at once.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Classifies a batch of images: each image is preprocessed on its own (in parallel on the
/// current rayon pool), the ones that preprocess are stacked into one `(N, 3, S, S)` tensor
/// and given to [`Model::forward`] in one call, which runs the images through the network
/// side by side on the pool (single-image passes in parallel: faster on CPU than one
/// N-image pass, see `Model::forward`), and every image gets its top `k` classes (softmax
/// probabilities, ImageNet labels) or the reason it has none. Results are in image order.
pub fn classify_images(model: &Model, images: &[DynamicImage], k: usize) -> Vec<QueryOutcome> {
    let prepared: Vec<Result<Tensor, String>> = images
        .par_iter()
        .map(|image| {
            model
                .preprocess(image)
                .map_err(|e| format!("cannot preprocess: {e}"))
        })
        .collect();
    let tensors: Vec<&Tensor> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let mut ranked = match top_classes(model, &tensors, k) {
        Ok(ranked) => ranked.into_iter(),
        Err(e) => {
            let reason = format!("forward pass failed: {e}");
            return prepared
                .into_iter()
                .map(|p| p.and(Err(reason.clone())))
                .collect();
        }
    };
    prepared
        .into_iter()
        .map(|p| match p {
            Ok(_) => ranked
                .next()
                .ok_or_else(|| "the network returned too few rows".to_string()),
            Err(e) => Err(e),
        })
        .collect()
}

/// Stack, forward, softmax, top-k.
fn top_classes(
    model: &Model,
    tensors: &[&Tensor],
    k: usize,
) -> Result<Vec<Vec<Class>>, ModelError> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let batch = Tensor::stack(tensors, 0)?;
    let logits = model.forward(&batch)?;
    let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
    Ok(probs.iter().map(|row| top_k(row, k)).collect())
}

/// The `k` most probable classes of one softmax row, most probable first (ties: lower
/// index), as results carry them.
pub fn top_k(probs: &[f32], k: usize) -> Vec<Class> {
    idunno_models::top_k(probs, k)
        .into_iter()
        .map(Class::from)
        .collect()
}

/// One compute slot: when [`Lanes`](crate::lanes::Lanes) gives it the turn, takes the next
/// prepared batch, runs it, and hands the results to the reporter; until the worker stops. It
/// finishes the batch in hand before it returns.
pub(crate) async fn compute_loop(shared: Arc<Shared>, reports: mpsc::Sender<Finished>) {
    let mut stop = shared.stop.clone();
    loop {
        let Some(turn) = shared.lanes.turn(&mut stop).await else {
            return;
        };
        let Some(work) = shared.queue.take(&mut stop).await else {
            return;
        };
        let lane = turn.start(work.pass_images());
        let batch = match work {
            Work::Online(batch) => {
                crate::online::run(&shared, batch, lane).await;
                continue;
            }
            Work::Batch(batch) => batch,
        };
        if let Some(finished) = run_batch(&shared, batch, lane).await {
            if reports.send(finished).await.is_err() {
                return;
            }
        }
    }
}

/// Runs one batch to its results, or gives it back (`None`) when its model cannot be
/// loaded now for a reason that may pass.
async fn run_batch(
    shared: &Arc<Shared>,
    batch: PreparedBatch,
    mut lane: Running<'_>,
) -> Option<Finished> {
    let PreparedBatch {
        lease,
        images,
        leased_at,
    } = batch;
    tracing::debug!(batch = %lease.batch_id, since_leased_ms = leased_at.elapsed().as_millis() as u64, "batch started");
    let model = match ModelSpec::from_lease(&lease) {
        Ok(spec) => shared.models.get(&spec).await,
        Err(e) => Err(e),
    };
    let model = match model {
        Ok(model) => model,
        Err(e) if e.is_transient() && lease.attempt < MAX_ATTEMPTS_BEFORE_FAILING => {
            tracing::warn!(batch = %lease.batch_id, model = %lease.model, error = %e, "model not available now; giving the batch back");
            drop(lane);
            release(shared, &lease).await;
            let mut stop = shared.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stopped(&mut stop) => {}
            }
            return None;
        }
        Err(e) => {
            tracing::error!(batch = %lease.batch_id, model = %lease.model, error = %e, "model cannot be loaded; failing the batch's queries");
            let reason = format!("model {} cannot be loaded: {e}", lease.model);
            let outcomes = images.iter().map(|_| Err(reason.clone())).collect();
            let result = results::assemble(&lease, &shared.worker_id, outcomes, 0);
            return Some(Finished { lease, result });
        }
    };

    // Keep the decodable images (moved, not copied) and where they go back.
    let mut outcomes: Vec<Option<QueryOutcome>> = Vec::with_capacity(images.len());
    let mut decoded = Vec::new();
    for image in images {
        match image {
            Ok(image) => {
                decoded.push(image);
                outcomes.push(None);
            }
            Err(reason) => outcomes.push(Some(Err(reason))),
        }
    }
    lane.compute();
    let k = shared.config.top_k;
    let pass = pass_size(&lease);
    // The batch's forward passes, one after the other: each pass's results and wall time.
    let ranked = shared
        .pool
        .run_pass(move || {
            let mut ranked = Vec::with_capacity(decoded.len());
            let mut passes = Vec::new();
            for images in decoded.chunks(pass) {
                let started = Instant::now();
                ranked.extend(classify_images(&model, images, k));
                passes.push((images.len(), started.elapsed()));
            }
            (ranked, passes)
        })
        .await;
    // The batch's share of the worker's time: its wall time when it ran alone.
    let share = lane.finish();
    let compute_ms = share.as_millis() as u64;
    let ranked = ranked.map(|(ranked, passes)| {
        for (images, took) in passes {
            shared.metrics.pass(&lease.model, "job", images, took);
        }
        ranked
    });
    shared.metrics.busy(share);
    let mut ranked = match ranked {
        Ok(ranked) => ranked.into_iter(),
        Err(e) => {
            // The compute task died (a panic inside candle): a bug, but the queries still
            // get an answer and the worker goes on.
            let reason = e.to_string();
            Vec::from_iter(outcomes.iter().map(|_| Err(reason.clone()))).into_iter()
        }
    };
    let outcomes = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                ranked
                    .next()
                    .unwrap_or_else(|| Err("no result computed".to_string()))
            })
        })
        .collect();
    let result = results::assemble(&lease, &shared.worker_id, outcomes, compute_ms);
    tracing::debug!(batch = %lease.batch_id, queries = result.results.len(), compute_ms, "batch computed");
    Some(Finished { lease, result })
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_models::{imagenet_label, weights, Arch, LoadOptions};

    fn sample(name: &str) -> DynamicImage {
        let path = format!("{}/../samples/{name}", env!("CARGO_MANIFEST_DIR"));
        image::open(path).unwrap()
    }

    #[test]
    fn top_k_orders_truncates_and_labels() {
        let p = [0.1, 0.5, 0.05, 0.3, 0.05];
        let top = top_k(&p, 3);
        let idx: Vec<usize> = top.iter().map(|c| c.index).collect();
        assert_eq!(idx, vec![1, 3, 0]);
        assert_eq!(top[0].label, imagenet_label(1));
        assert_eq!(top[0].probability, 0.5);
        assert_eq!(top_k(&p, 10).len(), 5);
        assert!(top_k(&p, 0).is_empty());
        assert_eq!(top_k(&p, 5)[3].index, 2); // ties: lower index first
    }

    #[test]
    fn an_image_that_cannot_be_preprocessed_fails_alone() {
        let bytes = weights::generate_to_bytes(Arch::EfficientNetLite0, 1).unwrap();
        let model =
            Model::from_safetensors_bytes(Arch::EfficientNetLite0, bytes, &LoadOptions::default())
                .unwrap();
        // A 1×4000 sliver would resize to 224×896000: refused by preprocessing.
        let sliver = DynamicImage::ImageRgb8(image::RgbImage::new(1, 4000));
        let images = vec![sample("chelsea.png"), sliver, sample("rocket.jpg")];
        let out = classify_images(&model, &images, 5);
        assert_eq!(out.len(), 3);
        assert!(out[1].as_ref().unwrap_err().contains("preprocess"));
        for i in [0, 2] {
            let top = out[i].as_ref().unwrap();
            assert_eq!(top.len(), 5);
            assert!(top.windows(2).all(|w| w[0].probability >= w[1].probability));
            assert!(top.iter().all(|c| (0.0..=1.0).contains(&c.probability)));
        }
        // Same image alone or in a batch: same answer.
        let alone = classify_images(&model, &images[2..], 5);
        let (a, b) = (&alone[0].as_ref().unwrap()[0], &out[2].as_ref().unwrap()[0]);
        assert_eq!(a.index, b.index);
        assert!((a.probability - b.probability).abs() < 1e-4);
        assert!(classify_images(&model, &[], 5).is_empty());
    }
}
