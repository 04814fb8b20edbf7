//! `idunno bench worker`: (a) images/s of one worker's compute path per model and batch size,
//! standalone (decoded sample photos, generated weights, the worker's own compute pool);
//! (b) the same model through the whole cluster: a job over uploaded photos run by one
//! worker of an embedded cluster (coordinator, storage node and worker, real HTTP between
//! them), timed from its start to its last completion, against the standalone figure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use idunno::embedded::{ClusterSpec, EmbeddedCluster};
use idunno_api::job::{Inputs, Job, JobState, NewJob};
use idunno_api::model::Model;
use idunno_api::Client;
use idunno_worker::compute::ComputePool;
use idunno_worker::models::{weights, Arch, LoadOptions, Model as Network};
use idunno_worker::{standalone_throughput, WorkerConfig};

use crate::cli::model::{add, WeightsSource};

#[derive(Debug, Args)]
pub struct WorkerBench {
    /// Architectures to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resnet18,resnet50,inception_v3,efficientnet_lite0"
    )]
    models: Vec<String>,
    /// Batch sizes of the standalone runs.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch_sizes: Vec<usize>,
    /// Timed images per standalone run (rounded up to whole batches).
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Batch size of the cluster job (compared with the standalone run of that size).
    #[arg(long, default_value_t = 8)]
    job_batch_size: usize,
    /// Inputs of the cluster job.
    #[arg(long, default_value_t = 96)]
    job_images: usize,
    /// Compute threads (default: one per core, as a worker).
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the cluster runs.
    #[arg(long)]
    standalone_only: bool,
}

/// One model's figures.
struct Row {
    arch: Arch,
    standalone: Vec<(usize, f64)>,
    cluster: Option<f64>,
}

pub async fn run(args: WorkerBench) -> anyhow::Result<()> {
    let archs = args
        .models
        .iter()
        .map(|m| m.parse::<Arch>())
        .collect::<Result<Vec<_>, _>>()?;
    if args.batch_sizes.contains(&0) || args.job_batch_size == 0 || args.job_images == 0 {
        bail!("batch sizes and image counts must be at least 1");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| WorkerConfig::new(Vec::new(), PathBuf::new()).compute_threads());
    let pool = ComputePool::new(threads)?;
    let photos = Arc::new(decoded_samples()?);
    println!(
        "{} compute thread(s); standalone: {} timed images per run after one warm-up batch; \
         cluster: a job of {} photos, batches of {}",
        pool.threads(),
        args.images,
        args.job_images,
        args.job_batch_size
    );
    let mut rows = Vec::new();
    for arch in archs {
        let model = Arc::new(load_generated(&pool, arch).await?);
        let mut standalone = Vec::new();
        let mut sizes = args.batch_sizes.clone();
        if !args.standalone_only && !sizes.contains(&args.job_batch_size) {
            sizes.push(args.job_batch_size);
        }
        for &batch in &sizes {
            let batches = args.images.div_ceil(batch);
            let (model, photos) = (model.clone(), photos.clone());
            let rate = pool
                .run(move || standalone_throughput(&model, &photos, batch, batches))
                .await??;
            println!(
                "  {:<18} batch {batch:>3}: {rate:7.2} images/s standalone",
                arch.name()
            );
            standalone.push((batch, rate));
        }
        drop(model);
        let cluster = if args.standalone_only {
            None
        } else {
            let rate = cluster_run(arch, &args, threads).await?;
            println!(
                "  {:<18} batch {:>3}: {rate:7.2} images/s through the cluster",
                arch.name(),
                args.job_batch_size
            );
            Some(rate)
        };
        rows.push(Row {
            arch,
            standalone,
            cluster,
        });
    }
    print_table(&rows, &args);
    Ok(())
}

fn print_table(rows: &[Row], args: &WorkerBench) {
    println!();
    let mut header = String::from("| model |");
    for b in &args.batch_sizes {
        header.push_str(&format!(" batch {b} (img/s) |"));
    }
    if !args.standalone_only {
        header.push_str(&format!(
            " cluster, batch {} (img/s) | cluster cost |",
            args.job_batch_size
        ));
    }
    println!("{header}");
    println!("|{}", "---|".repeat(header.matches('|').count() - 1));
    for row in rows {
        let mut line = format!("| {} |", row.arch.name());
        for b in &args.batch_sizes {
            let rate = row.standalone.iter().find(|(s, _)| s == b).map(|(_, r)| *r);
            line.push_str(&format!(" {:.2} |", rate.unwrap_or(f64::NAN)));
        }
        if let Some(cluster) = row.cluster {
            let base = row
                .standalone
                .iter()
                .find(|(s, _)| *s == args.job_batch_size)
                .map(|(_, r)| *r)
                .unwrap_or(f64::NAN);
            line.push_str(&format!(
                " {cluster:.2} | {:+.1}% |",
                (1.0 - cluster / base) * 100.0
            ));
        }
        println!("{line}");
    }
}

/// The sample photos, decoded.
fn decoded_samples() -> anyhow::Result<Vec<image::DynamicImage>> {
    let dir = samples_dir()?;
    let mut out = Vec::new();
    for path in sample_paths(&dir)? {
        out.push(image::open(&path).with_context(|| format!("{}", path.display()))?);
    }
    Ok(out)
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

/// The image files of `dir`, sorted.
fn sample_paths(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| image::ImageFormat::from_path(p).is_ok())
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

/// Images/s of a job of `arch` run by the one worker of a fresh embedded cluster.
async fn cluster_run(arch: Arch, args: &WorkerBench, threads: usize) -> anyhow::Result<f64> {
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
    let outcome = timed_job(&client, arch, args).await;
    cluster.shutdown().await;
    outcome
}

async fn timed_job(client: &Client, arch: Arch, args: &WorkerBench) -> anyhow::Result<f64> {
    let photos = sample_paths(&samples_dir()?)?;
    let mut inputs = Vec::new();
    for i in 0..args.job_images {
        let local = &photos[i % photos.len()];
        let name = format!(
            "bench/{i:05}-{}",
            local.file_name().unwrap_or_default().to_string_lossy()
        );
        client.upload_file(&name, local, None).await?;
        inputs.push(name);
    }
    add(
        client,
        "bench",
        arch.name(),
        &WeightsSource::Generate(1),
        None,
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
    let started = Instant::now();
    let job: Job = client
        .post(
            "/v1/jobs",
            &NewJob {
                name: Some("bench".into()),
                model: "bench".into(),
                inputs: Inputs::List(inputs),
                batch_size: args.job_batch_size as u32,
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
    let seconds = started.elapsed().as_secs_f64();
    if job.failed > 0 {
        bail!("{} of the job's queries failed", job.failed);
    }
    Ok(job.queries as f64 / seconds)
}
