//! Forward-pass and preprocessing timings of the worker's models (generated weights, CPU).
//!
//! `cargo bench -p idunno-models --bench forward -- [MODEL,…] [BATCH,…] [THREADS]`
//! (defaults: all of resnet18, resnet50, inception_v3, efficientnet_lite0; batches 1,8;
//! one thread per core). For every model and batch size it prints the time of one
//! `Model::forward` call on the batch (its images side by side) on a rayon pool of
//! THREADS threads — the worker's compute pool — and the images/s that makes (mean, median
//! and fastest of at least five runs in a 3 s budget), then the decoding time of each
//! sample photo (one thread) and the per-image preprocessing time. The weights are
//! `weights::generate`'s for seed 1, the file `gen_weights --seed 1` writes.
//! With `FORWARD_BENCH_JSON=1` it prints only one JSON object per model and batch size
//! (`arch`, `batch`, `threads`, `median_s`, `images_per_s` of the median run): the IDunno
//! column of `scripts/bench-vs-onnx.sh`.
//! The worker's whole path, decoding overlapped with compute, is `idunno bench worker`.
//! A measuring tool, not a test: nothing is asserted, and under `cargo test --all-targets`
//! (which runs bench targets without `--bench`) it returns at once.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use idunno_models::{weights, Arch, LoadOptions, Model};

/// Seconds of one run: the mean, the median and the fastest (the machine may be shared: the
/// minimum is the figure least disturbed by other load, the median the one to compare
/// with other frameworks' medians).
struct Timing {
    mean: f64,
    median: f64,
    best: f64,
}

/// Repeats `f` for at least `budget` (and at least five times) after one warm-up run.
fn time(budget: Duration, mut f: impl FnMut()) -> Timing {
    f();
    let started = Instant::now();
    let mut runs = Vec::new();
    while runs.len() < 5 || started.elapsed() < budget {
        let run = Instant::now();
        f();
        runs.push(run.elapsed().as_secs_f64());
    }
    runs.sort_by(f64::total_cmp);
    let mid = runs.len() / 2;
    Timing {
        mean: runs.iter().sum::<f64>() / runs.len() as f64,
        median: if runs.len() % 2 == 0 {
            (runs[mid - 1] + runs[mid]) / 2.0
        } else {
            runs[mid]
        },
        best: runs[0],
    }
}

fn list<T: std::str::FromStr>(arg: Option<&String>, default: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    arg.map(String::as_str)
        .unwrap_or(default)
        .split(',')
        .map(|s| s.trim().parse().expect("bad argument"))
        .collect()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this target too, but
    // without it: then there is nothing to measure (and no optimised build to measure).
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "forward: a benchmark; run it with `cargo bench -p idunno-models --bench forward`"
        );
        return;
    }
    // Positional arguments are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let archs: Vec<Arch> = list(
        args.first(),
        "resnet18,resnet50,inception_v3,efficientnet_lite0",
    );
    let batches: Vec<usize> = list(args.get(1), "1,8");
    let threads = args.get(2).map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t.parse().expect("bad thread count"),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples");
    let files: Vec<(String, Vec<u8>)> =
        ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
            .iter()
            .map(|f| {
                let bytes = std::fs::read(format!("{samples}/{f}")).expect("sample photo");
                (f.to_string(), bytes)
            })
            .collect();
    let photos: Vec<_> = files
        .iter()
        .map(|(_, bytes)| image::load_from_memory(bytes).expect("sample photo"))
        .collect();
    let json = std::env::var("FORWARD_BENCH_JSON").is_ok_and(|v| v == "1");
    if !json {
        println!("{threads} thread(s)");
        for (f, bytes) in &files {
            let t = time(Duration::from_secs(1), || {
                std::hint::black_box(image::load_from_memory(bytes).expect("decode"));
            });
            println!("decode {f:<14} {:6.2} ms (one thread)", t.mean * 1e3);
        }
    }
    for arch in archs {
        let bytes = weights::generate_to_bytes(arch, 1).expect("weights");
        let model =
            Model::from_safetensors_bytes(arch, bytes, &LoadOptions::default()).expect("model");
        let side = arch.input_size();
        for &n in &batches {
            let x = Tensor::randn(0f32, 1f32, (n, 3, side, side), &Device::Cpu)
                .and_then(|x| x.to_dtype(DType::F32))
                .expect("input");
            let t = pool.install(|| {
                time(Duration::from_secs(3), || {
                    std::hint::black_box(model.forward(&x).expect("forward"));
                })
            });
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "arch": arch.name(),
                        "batch": n,
                        "threads": threads,
                        "median_s": t.median,
                        "images_per_s": n as f64 / t.median,
                    })
                );
                continue;
            }
            println!(
                "{:<18} batch {n:>3}: forward {:8.1} ms mean, {:8.1} median, {:8.1} best  \
                 {:7.2} images/s median, {:7.2} best",
                arch.name(),
                t.mean * 1e3,
                t.median * 1e3,
                t.best * 1e3,
                n as f64 / t.median,
                n as f64 / t.best
            );
        }
        if json {
            continue;
        }
        let t = pool.install(|| {
            time(Duration::from_secs(1), || {
                for p in &photos {
                    std::hint::black_box(model.preprocess(p).expect("preprocess"));
                }
            })
        });
        let secs = t.mean / photos.len() as f64;
        println!(
            "{:<18} preprocess: {:6.2} ms/image (one at a time)",
            arch.name(),
            secs * 1e3
        );
    }
}
