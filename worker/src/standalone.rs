//! The worker's compute path without a cluster: images/s of a model on decoded images, for
//! `idunno bench worker` (the figure the cluster's throughput is compared against).
//!
//! It runs exactly what a worker runs per batch ([`crate::compute::classify_images`]: per-image
//! preprocessing, one [`Model::forward`] call for the batch — its images run side by side on
//! the pool — softmax, top-5), minus fetching and decoding.

use std::time::Instant;

use image::DynamicImage;

use crate::compute::classify_images;
use crate::error::WorkerError;
use crate::models::Model;

/// Classes ranked per image, as a worker with default settings does.
const TOP_K: usize = 5;

/// Runs `batches` batches of `batch_size` images after untimed warm-up batches, and returns
/// images per second. The images are taken from `images` in turn across batches (image `i` of
/// the run is `images[i % len]`), as a job over inputs that cycle through them would see them,
/// so every image's decoding-independent cost (preprocessing depends on its size) counts.
///
/// It computes on the calling thread's rayon pool: the global one (`RAYON_NUM_THREADS`, else
/// one thread per core), or a worker's [`crate::compute::ComputePool`] when called inside
/// [`crate::compute::ComputePool::run`].
pub fn standalone_throughput(
    model: &Model,
    images: &[DynamicImage],
    batch_size: usize,
    batches: usize,
) -> Result<f64, WorkerError> {
    if images.is_empty() || batch_size == 0 || batches == 0 {
        return Err(WorkerError::Config(
            "a throughput run needs images, a batch size and a batch count of at least 1".into(),
        ));
    }
    let run: Vec<DynamicImage> = images
        .iter()
        .cycle()
        .take(batch_size * batches)
        .cloned()
        .collect();
    // Warm-up: untimed batches of the same size until every image was in one, and a check
    // that each classifies (a failing image would flatter the figure).
    let warm_up = images.len().div_ceil(batch_size) * batch_size;
    for batch in run[..warm_up.min(run.len())].chunks(batch_size) {
        if let Some(Err(e)) = classify_images(model, batch, TOP_K)
            .into_iter()
            .find(|r| r.is_err())
        {
            return Err(WorkerError::Config(format!(
                "an image cannot be classified: {e}"
            )));
        }
    }
    let started = Instant::now();
    for batch in run.chunks(batch_size) {
        let ranked = classify_images(model, batch, TOP_K);
        std::hint::black_box(ranked);
    }
    let seconds = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    Ok(run.len() as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{weights, Arch, LoadOptions};

    #[test]
    fn throughput_is_measured_and_bad_arguments_refused() {
        let bytes = weights::generate_to_bytes(Arch::EfficientNetLite0, 2).unwrap();
        let model =
            Model::from_safetensors_bytes(Arch::EfficientNetLite0, bytes, &LoadOptions::default())
                .unwrap();
        let image = image::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../samples/coffee.png"
        ))
        .unwrap();
        let rate = standalone_throughput(&model, std::slice::from_ref(&image), 2, 1).unwrap();
        assert!(rate.is_finite() && rate > 0.0);
        assert!(standalone_throughput(&model, &[], 2, 1).is_err());
        assert!(standalone_throughput(&model, &[image], 0, 1).is_err());
    }
}
