//! `idunno bench worker`: (a) images/s of one worker's compute path per model and batch size,
//! standalone (the sample photos' bytes in memory, decoded and classified with generated
//! weights on a compute pool of the worker's size, as many batches at once as the worker's
//! lanes run: two batches of one on two threads);
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
//!
//! With `--rounds N` both runs are made N times, one after the other (a fresh embedded
//! cluster each round), and the figures are medians: the cost is the median of the rounds'
//! costs, each a standalone run against the cluster run right after it.

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
    /// Rounds, each a standalone run and a cluster run of every batch size, one after the
    /// other: the figures are the medians over the rounds, the cost the median of each
    /// round's cost (this machine's load drifts; one round can be off by several percent).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Skip the cluster runs.
    #[arg(long)]
    standalone_only: bool,
    /// Print only one JSON object per model and batch size (for scripts): the medians
    /// `standalone` and `cluster` (images/s) and `cost` (a fraction of the standalone rate),
    /// and each round's rates in `standalone_runs` and `cluster_runs`.
    #[arg(long)]
    json: bool,
}

/// One model and batch size's figures, one per round (none through the cluster with
/// `--standalone-only`).
struct Row {
    arch: Arch,
    batch: usize,
    standalone: Vec<f64>,
    cluster: Vec<f64>,
}

impl Row {
    /// What the cluster costs in each round, as a fraction of the standalone rate.
    fn costs(&self) -> Vec<f64> {
        self.standalone
            .iter()
            .zip(&self.cluster)
            .map(|(s, c)| 1.0 - c / s)
            .collect()
    }
}

/// The median of `xs` (the mean of the middle two for an even count); `None` if empty.
fn median(xs: &[f64]) -> Option<f64> {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    match xs.len() {
        0 => None,
        n if n % 2 == 1 => Some(xs[mid]),
        _ => Some((xs[mid - 1] + xs[mid]) / 2.0),
    }
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
    if args.batch_sizes.is_empty()
        || args.batch_sizes.contains(&0)
        || args.images == 0
        || args.rounds == 0
    {
        bail!("batch sizes, the image count and the rounds must be at least 1");
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
         models {}; batches {:?}; {} round(s)",
        pool.threads(),
        args.images,
        paths.len(),
        archs.iter().map(|a| a.name()).collect::<Vec<_>>().join(","),
        args.batch_sizes,
        args.rounds
    ));
    let mut rows = Vec::new();
    for arch in archs {
        let first = rows.len();
        rows.extend(args.batch_sizes.iter().map(|&batch| Row {
            arch,
            batch,
            standalone: Vec::new(),
            cluster: Vec::new(),
        }));
        for round in 1..=args.rounds {
            if args.rounds > 1 {
                log(format!(
                    "  {} round {round} of {}",
                    arch.name(),
                    args.rounds
                ));
            }
            let model = Arc::new(load_generated(&pool, arch).await?);
            for row in &mut rows[first..] {
                let batch = row.batch;
                let batches = args.images.div_ceil(batch);
                let (model, photos) = (model.clone(), photos.clone());
                let rate = pool
                    .run(move || standalone_throughput(&model, &photos, batch, batches))
                    .await??;
                log(format!(
                    "  {:<18} batch {batch:>3}: {rate:8.2} images/s standalone",
                    arch.name()
                ));
                row.standalone.push(rate);
            }
            drop(model);
            if !args.standalone_only {
                for (batch, rate) in cluster_runs(arch, &args, &paths, threads).await? {
                    if let Some(row) = rows[first..].iter_mut().find(|r| r.batch == batch) {
                        row.cluster.push(rate);
                    }
                }
            }
        }
    }
    if args.json {
        for row in &rows {
            println!(
                "{}",
                serde_json::json!({
                    "arch": row.arch.name(),
                    "batch": row.batch,
                    "rounds": row.standalone.len(),
                    "standalone": median(&row.standalone),
                    "cluster": median(&row.cluster),
                    "cost": median(&row.costs()),
                    "standalone_runs": row.standalone,
                    "cluster_runs": row.cluster,
                })
            );
        }
    } else {
        print_table(&rows);
    }
    Ok(())
}

/// The table: medians over the rounds, and with several rounds the range of the cost.
fn print_table(rows: &[Row]) {
    let rounds = rows.first().map_or(1, |r| r.standalone.len());
    println!();
    if rounds > 1 {
        println!("Medians of {rounds} rounds; the cost's range over the rounds in brackets.");
    }
    println!("| model | batch | standalone (img/s) | cluster, 1 worker (img/s) | cluster cost |");
    println!("|---|---|---|---|---|");
    let percent = |x: f64| format!("{:+.1} %", x * 100.0);
    for row in rows {
        let costs = row.costs();
        let cluster = median(&row.cluster).map_or("-".into(), |c| format!("{c:.2}"));
        let cost = match median(&costs) {
            None => "-".into(),
            Some(m) if costs.len() > 1 => {
                let lo = costs.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = costs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{} ({} … {})", percent(m), percent(lo), percent(hi))
            }
            Some(m) => percent(m),
        };
        println!(
            "| {} | {} | {:.2} | {cluster} | {cost} |",
            row.arch.name(),
            row.batch,
            median(&row.standalone).unwrap_or(f64::NAN)
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
            if !args.json {
                println!(
                    "  {:<18} batch {batch:>3}: {rate:8.2} images/s through the cluster",
                    arch.name()
                );
            }
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
        // As `idunno job` waits. The rate comes from the coordinator's clock, so polling
        // faster would only add requests to what the cluster is measured doing.
        tokio::time::sleep(Duration::from_millis(100)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_give_medians_and_per_round_costs() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        let row = Row {
            arch: Arch::ResNet50,
            batch: 8,
            standalone: vec![100.0, 50.0, 80.0],
            cluster: vec![90.0, 49.0, 40.0],
        };
        // Each round's cluster run against its own standalone run, not medians against medians.
        let costs = row.costs();
        assert_eq!(costs.len(), 3);
        assert!((costs[0] - 0.10).abs() < 1e-12 && (costs[1] - 0.02).abs() < 1e-12);
        assert!((median(&costs).unwrap() - 0.10).abs() < 1e-12);
        let standalone_only = Row {
            cluster: Vec::new(),
            ..row
        };
        assert!(standalone_only.costs().is_empty());
    }
}
