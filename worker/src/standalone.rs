//! The worker's compute path without a cluster: images/s of a model on image files held in
//! memory, for `idunno bench worker` (the figure the cluster's throughput is compared
//! against).
//!
//! It runs what a worker runs per batch once the inputs' bytes are in hand: decoding
//! ([`crate::inputs::decode`], by content; the next batch is decoded while the current one
//! computes, as the worker's prefetch does), then
//! [`crate::compute::classify_images`] (per-image preprocessing, one [`Model::forward`] call
//! for the batch — its images run side by side on the pool — softmax, top-5), with as many
//! batches at once as a worker of default capacity runs ([`Lanes::steady`]: two batches of
//! one on two threads). What it leaves out is what the cluster adds: leases, fetching from
//! storage nodes, writing results and reporting completions.

use std::time::Instant;

use image::DynamicImage;
use rayon::prelude::*;

use crate::compute::classify_images;
use crate::error::WorkerError;
use crate::lanes::Lanes;
use idunno_models::Model;

/// Classes ranked per image, as a worker with default settings does.
const TOP_K: usize = 5;

/// An input as a worker receives it: its name (the format falls back on the extension) and
/// the file's bytes.
pub type EncodedImage = (String, Vec<u8>);

/// Runs `batches` batches of `batch_size` images after untimed warm-up batches, and returns
/// images per second. The images are taken from `files` in turn across batches (image `i` of
/// the run is `files[i % len]`), as a job over inputs that cycle through them would see them,
/// so every file's decoding and preprocessing cost (both depend on its size) counts.
///
/// It computes on the calling thread's rayon pool: the global one (`RAYON_NUM_THREADS`, else
/// one thread per core), or a worker's [`crate::pool::ComputePool`] when called inside
/// [`crate::pool::ComputePool::run`].
pub fn standalone_throughput(
    model: &Model,
    files: &[EncodedImage],
    batch_size: usize,
    batches: usize,
) -> Result<f64, WorkerError> {
    if files.is_empty() || batch_size == 0 || batches == 0 {
        return Err(WorkerError::Config(
            "a throughput run needs images, a batch size and a batch count of at least 1".into(),
        ));
    }
    let run: Vec<&EncodedImage> = files.iter().cycle().take(batch_size * batches).collect();
    // Warm-up: untimed batches of the same size until every file was in one, and a check
    // that each decodes and classifies (a failing image would flatter the figure).
    let warm_up = files.len().div_ceil(batch_size) * batch_size;
    run_batches(model, &run[..warm_up.min(run.len())], batch_size)
        .map_err(|e| WorkerError::Config(format!("an image cannot be classified: {e}")))?;
    let lanes = Lanes::steady(rayon::current_num_threads(), 1, batch_size);
    // Batch `i` goes to lane `i mod lanes`: each lane a worker's compute slot, all at once.
    let batches: Vec<&[&EncodedImage]> = run.chunks(batch_size).collect();
    let streams: Vec<Vec<&EncodedImage>> = (0..lanes)
        .map(|lane| {
            batches
                .iter()
                .skip(lane)
                .step_by(lanes)
                .flat_map(|batch| batch.iter().copied())
                .collect()
        })
        .collect();
    let started = Instant::now();
    streams
        .par_iter()
        .with_max_len(1)
        .map(|stream| run_batches(model, stream, batch_size))
        .collect::<Result<Vec<()>, String>>()
        .map_err(WorkerError::Config)?;
    let seconds = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    Ok(run.len() as f64 / seconds)
}

/// Classifies `files` in batches of `batch_size`, decoding the next batch while the current
/// one computes (as a worker's prefetch does), both on the current pool. The first error
/// of any image ends the run.
fn run_batches(model: &Model, files: &[&EncodedImage], batch_size: usize) -> Result<(), String> {
    let decode = |batch: &[&EncodedImage]| {
        batch
            .par_iter()
            .map(|(name, bytes)| crate::inputs::decode(bytes, name))
            .collect::<Result<Vec<DynamicImage>, String>>()
    };
    let batches: Vec<&[&EncodedImage]> = files.chunks(batch_size).collect();
    let mut next = match batches.first() {
        Some(batch) => decode(batch)?,
        None => return Ok(()),
    };
    for i in 0..batches.len() {
        let current = std::mem::take(&mut next);
        let (decoded, ranked) = rayon::join(
            || batches.get(i + 1).map(|batch| decode(batch)),
            || classify_images(model, &current, TOP_K),
        );
        if let Some(e) = std::hint::black_box(ranked)
            .into_iter()
            .find_map(|r| r.err())
        {
            return Err(e);
        }
        if let Some(decoded) = decoded {
            next = decoded?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_models::{weights, Arch, LoadOptions};

    #[test]
    fn throughput_is_measured_and_bad_arguments_refused() {
        let bytes = weights::generate_to_bytes(Arch::EfficientNetLite0, 2).unwrap();
        let model =
            Model::from_safetensors_bytes(Arch::EfficientNetLite0, bytes, &LoadOptions::default())
                .unwrap();
        let coffee = (
            "coffee.png".to_string(),
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../samples/coffee.png"
            ))
            .unwrap(),
        );
        let rate = standalone_throughput(&model, std::slice::from_ref(&coffee), 2, 1).unwrap();
        assert!(rate.is_finite() && rate > 0.0);
        assert!(standalone_throughput(&model, &[], 2, 1).is_err());
        assert!(standalone_throughput(&model, std::slice::from_ref(&coffee), 0, 1).is_err());
        let junk = ("junk.png".to_string(), b"not an image".to_vec());
        let err = standalone_throughput(&model, &[coffee, junk], 2, 1).unwrap_err();
        assert!(err.to_string().contains("cannot be classified"), "{err}");
    }
}
