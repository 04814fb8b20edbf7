//! `idunno bench forward`: the models' forward pass alone — no decoding, no cluster — on a
//! compute pool of the worker's kind, images/s as the median of several timed runs. It is
//! the IDunno column of `scripts/bench-vs-onnx.sh`, which gives it the same weights file
//! PyTorch and ONNX Runtime load (`--weights-dir`), and reads its JSON lines (`--json`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use idunno_models::{weights, Arch, Device, LoadOptions, Model, Tensor};
use idunno_worker::pool::ComputePool;

#[derive(Debug, Args)]
pub struct ForwardBench {
    /// Architectures (default: resnet18, resnet50, resnet101, inception_v3,
    /// efficientnet_lite0).
    #[arg(long, value_delimiter = ',')]
    models: Vec<Arch>,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch_sizes: Vec<usize>,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed runs per model and batch size (after one untimed run); the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Folder of `<arch>.safetensors` to load (default: weights generated with seed 1).
    #[arg(long)]
    weights_dir: Option<PathBuf>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ForwardBench) -> anyhow::Result<()> {
    let archs = if args.models.is_empty() {
        vec![
            Arch::ResNet18,
            Arch::ResNet50,
            Arch::ResNet101,
            Arch::InceptionV3,
            Arch::EfficientNetLite0,
        ]
    } else {
        args.models.clone()
    };
    anyhow::ensure!(
        args.runs > 0 && args.threads > 0,
        "--runs and --threads must be at least 1"
    );
    anyhow::ensure!(
        !args.batch_sizes.contains(&0),
        "batch sizes must be at least 1"
    );
    let pool = ComputePool::new(args.threads)?;
    if !args.json {
        println!(
            "forward pass alone, {} thread(s), median of {} runs",
            args.threads, args.runs
        );
    }
    for arch in archs {
        let options = LoadOptions::default();
        let model = match &args.weights_dir {
            Some(dir) => {
                let path = dir.join(format!("{}.safetensors", arch.name()));
                Model::load(arch, &path, &options)
                    .with_context(|| format!("loading {}", path.display()))?
            }
            None => {
                Model::from_safetensors_bytes(arch, weights::generate_to_bytes(arch, 1)?, &options)?
            }
        };
        let model = Arc::new(model);
        let side = arch.input_size();
        for &batch in &args.batch_sizes {
            let x = Tensor::randn(0f32, 1f32, (batch, 3, side, side), &Device::Cpu)?;
            let (model, runs) = (model.clone(), args.runs);
            let seconds = pool
                .run(move || -> anyhow::Result<Vec<f64>> {
                    model.forward(&x)?;
                    let mut seconds = Vec::with_capacity(runs);
                    for _ in 0..runs {
                        let started = Instant::now();
                        std::hint::black_box(model.forward(&x)?);
                        seconds.push(started.elapsed().as_secs_f64());
                    }
                    Ok(seconds)
                })
                .await??;
            let (_, median, _) = super::summary(&seconds);
            let images_per_s = batch as f64 / median;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "arch": arch.name(),
                        "batch": batch,
                        "threads": args.threads,
                        "median_s": median,
                        "images_per_s": images_per_s,
                    })
                );
            } else {
                println!(
                    "{:<18} batch {batch:>3}: {:8.1} ms  {images_per_s:7.2} images/s",
                    arch.name(),
                    median * 1e3
                );
            }
        }
    }
    Ok(())
}
