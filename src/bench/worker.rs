//! `idunno bench worker`: (a) images/s of one worker's compute path per model and batch size,
//! standalone (the sample photos' bytes in memory, decoded and classified with generated
//! weights on a compute pool of the worker's size);
//! (b) the same model and batch size through the whole cluster: a job over the same photos
//! uploaded to SDFS, run by the one worker of an embedded cluster (coordinator, storage node
//! and worker, real HTTP between them), timed by the coordinator from the job's start to its
//! last completion; (c) what the cluster costs against the standalone figure (goal: ≤ 5 %).
//!
//! The two runs differ only in what the cluster adds: the same architecture and generated
//! weights (seed 1), the same batch size, the same photos in the same order (input `i` is
//! photo `i mod n`) and count, the same number of compute threads, and a warm model in both
//! (the standalone run classifies every photo once untimed; the worker has loaded the model
//! and run an untimed one-batch job before the timed one). What the cluster adds is leasing,
//! fetching inputs from the storage node, writing results and reporting completions, and
//! everything the coordinator and the storage node do for that, on the same cores.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use idunno::embedded::{ClusterSpec, EmbeddedCluster};
use idunno_api::job::{Inputs, Job, JobState, NewJob};
use idunno_api::model::Model;
use idunno_api::Client;
use idunno_models::{weights, Arch, LoadOptions, Model as Network};
use idunno_worker::pool::ComputePool;
use idunno_worker::{standalone_throughput, EncodedImage, WorkerConfig};

use crate::cli::model::{add, Shape, WeightsSource};

/// Seed of the generated weights, the same in both runs.
const SEED: u64 = 1;

#[derive(Debug, Args)]
pub struct WorkerBench {
    /// Architectures to measure (default: every one the worker runs).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Batch sizes, of the standalone runs and of the cluster jobs alike.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch_sizes: Vec<usize>,
    /// Timed images per run, standalone and through the cluster alike (rounded up to whole
    /// batches).
    #[arg(long, default_value_t = 96)]
    images: usize,
    /// Compute threads (default: one per core, as a worker).
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the cluster runs.
    #[arg(long)]
    standalone_only: bool,
    /// Print only one JSON object per model and batch size (for scripts).
    #[arg(long)]
    json: bool,
}

/// One model and batch size's figures.
struct Row {
    arch: Arch,
    batch: usize,
    standalone: f64,
    cluster: Option<f64>,
}

pub async fn run(args: WorkerBench) -> anyhow::Result<()> {
    let archs = if args.models.is_empty() {
        Arch::ALL.to_vec()
    } else {
        args.models
            .iter()
            .map(|m| m.parse::<Arch>())
            .collect::<Result<Vec<_>, _>>()?
    };
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) || args.images == 0 {
        bail!("batch sizes and the image count must be at least 1");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| WorkerConfig::new(Vec::new(), PathBuf::new()).compute_threads());
    let pool = ComputePool::new(threads)?;
    let paths = sample_paths(&samples_dir()?)?;
    let photos = Arc::new(read_files(&paths)?);
    let log = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    log(format!(
        "{} compute thread(s); {} timed images per run (the {} sample photos in turn); \
         models {}; batches {:?}",
        pool.threads(),
        args.images,
        paths.len(),
        archs.iter().map(|a| a.name()).collect::<Vec<_>>().join(","),
        args.batch_sizes
    ));
    let mut rows = Vec::new();
    for arch in archs {
        let model = Arc::new(load_generated(&pool, arch).await?);
        let mut standalone = Vec::new();
        for &batch in &args.batch_sizes {
            let batches = args.images.div_ceil(batch);
            let (model, photos) = (model.clone(), photos.clone());
            let rate = pool
                .run(move || standalone_throughput(&model, &photos, batch, batches))
                .await??;
            log(format!(
                "  {:<18} batch {batch:>3}: {rate:8.2} images/s standalone",
                arch.name()
            ));
            standalone.push((batch, rate));
        }
        drop(model);
        let cluster = if args.standalone_only {
            Vec::new()
        } else {
            cluster_runs(arch, &args, &paths, threads).await?
        };
        for (batch, rate) in standalone {
            rows.push(Row {
                arch,
                batch,
                standalone: rate,
                cluster: cluster.iter().find(|(b, _)| *b == batch).map(|(_, r)| *r),
            });
        }
    }
    if args.json {
        for row in &rows {
            println!(
                "{}",
                serde_json::json!({
                    "arch": row.arch.name(),
                    "batch": row.batch,
                    "standalone": row.standalone,
                    "cluster": row.cluster,
                })
            );
        }
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| model | batch | standalone (img/s) | cluster, 1 worker (img/s) | cluster cost |");
    println!("|---|---|---|---|---|");
    for row in rows {
        let (cluster, cost) = match row.cluster {
            Some(c) => (
                format!("{c:.2}"),
                format!("{:+.1} %", (1.0 - c / row.standalone) * 100.0),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {:.2} | {cluster} | {cost} |",
            row.arch.name(),
            row.batch,
            row.standalone
        );
    }
}

/// The files at `paths`, named as they are, as a worker receives inputs.
fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<EncodedImage>> {
    paths
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            Ok((path.to_string_lossy().into_owned(), bytes))
        })
        .collect()
}

fn samples_dir() -> anyhow::Result<PathBuf> {
    for dir in [
        PathBuf::from("samples"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("samples"),
    ] {
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    bail!("no samples/ folder: run from the IDunno repository")
}

/// The image files of `dir` (by content), sorted.
fn sample_paths(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| idunno_worker::inputs::is_image_file(p))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{} holds no images", dir.display());
    }
    Ok(paths)
}

async fn load_generated(pool: &ComputePool, arch: Arch) -> anyhow::Result<Network> {
    Ok(pool
        .run(move || {
            let bytes = weights::generate_to_bytes(arch, 1)?;
            Network::from_safetensors_bytes(arch, bytes, &LoadOptions::default())
        })
        .await??)
}

/// Images/s of jobs of `arch` run by the one worker of a fresh embedded cluster, one job per
/// batch size, each after an untimed one-batch job of the same size.
async fn cluster_runs(
    arch: Arch,
    args: &WorkerBench,
    photos: &[PathBuf],
    threads: usize,
) -> anyhow::Result<Vec<(usize, f64)>> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        coordinators: 1,
        storage_nodes: 1,
        workers: 0,
        listen: None,
    };
    let mut cluster = EmbeddedCluster::start(dir.path(), &spec, |_| {}).await?;
    cluster
        .add_worker(|w| {
            w.threads = Some(threads);
            w.batch_wait_ms = 10_000;
        })
        .await?;
    let client = cluster.client();
    let outcome = async {
        let largest = args.batch_sizes.iter().max().copied().unwrap_or(1);
        let inputs = upload(&client, photos, args.images.div_ceil(largest) * largest).await?;
        add(
            &client,
            "bench",
            arch.name(),
            &WeightsSource::Generate(SEED),
            Shape::default(),
        )
        .await?;
        let _: Model = client.post("/v1/models/bench/load", &()).await?;
        while client
            .get::<Model>("/v1/models/bench")
            .await?
            .loaded_on
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut rates = Vec::new();
        for &batch in &args.batch_sizes {
            let timed = args.images.div_ceil(batch) * batch;
            job(&client, &inputs[..batch.min(inputs.len())], batch).await?;
            let rate = job(&client, &inputs[..timed], batch).await?;
            println!(
                "  {:<18} batch {batch:>3}: {rate:8.2} images/s through the cluster",
                arch.name()
            );
            rates.push((batch, rate));
        }
        anyhow::Ok(rates)
    }
    .await;
    cluster.shutdown().await;
    outcome
}

/// Uploads `n` inputs cycling through `photos` (input `i` is photo `i mod len`).
async fn upload(client: &Client, photos: &[PathBuf], n: usize) -> anyhow::Result<Vec<String>> {
    let mut inputs = Vec::with_capacity(n);
    for i in 0..n {
        let local = &photos[i % photos.len()];
        let name = format!(
            "bench/{i:05}-{}",
            local.file_name().unwrap_or_default().to_string_lossy()
        );
        client.upload_file(&name, local, None).await?;
        inputs.push(name);
    }
    Ok(inputs)
}

/// Runs a job of model `bench` over `inputs` in batches of `batch`; its images/s from the
/// coordinator's start and finish times (the client's clock if it gave none).
async fn job(client: &Client, inputs: &[String], batch: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let job: Job = client
        .post(
            "/v1/jobs",
            &NewJob {
                name: Some("bench".into()),
                model: "bench".into(),
                inputs: Inputs::List(inputs.to_vec()),
                batch_size: batch as u32,
                weight: 1,
                start: true,
            },
        )
        .await?;
    let job = loop {
        let job: Job = client.get(&format!("/v1/jobs/{}", job.id)).await?;
        if job.state == JobState::Done {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let client_seconds = started.elapsed().as_secs_f64();
    if job.failed > 0 {
        bail!("{} of the job's queries failed", job.failed);
    }
    let seconds = match (job.started_at_ms, job.finished_at_ms) {
        (Some(start), Some(end)) if end > start => (end - start) as f64 / 1e3,
        _ => client_seconds,
    };
    Ok(job.queries as f64 / seconds)
}
