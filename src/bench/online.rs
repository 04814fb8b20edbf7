//! `idunno bench online`: online inference over `/v2` against an embedded cluster (one
//! coordinator, one storage node, two workers of one compute thread each, real HTTP between
//! them): requests/s and p50/p99 latency of single-image requests (an encoded sample photo,
//! sent as Triton's clients send it: `BYTES` through the binary extension, top-5 classes
//! back) at 1, 4 and 16 concurrent clients, with dynamic batching and without (batches of
//! one), and while a batch job of the same model runs (both rates reported, with their fair
//! shares). The limit beside them: the same model's forward pass alone, decoding included,
//! on the same two threads (`standalone_throughput`, batch 8).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use idunno::embedded::{ClusterSpec, EmbeddedCluster};
use idunno_api::job::{Inputs, Job, NewJob};
use idunno_api::v2::{encode_bytes_elements, HEADER_LENGTH_HEADER};
use idunno_api::Client;
use idunno_models::{weights, Arch, LoadOptions, Model as Network};
use idunno_server::tls::TlsOptions;
use idunno_worker::pool::ComputePool;
use idunno_worker::{standalone_throughput, EncodedImage};
use serde_json::json;

#[derive(Debug, Args)]
pub struct OnlineBench {
    /// Architecture served (generated weights).
    #[arg(long, default_value = "resnet18")]
    model: String,
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Seconds each run is timed (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Largest online batch with dynamic batching on.
    #[arg(long, default_value_t = 8)]
    max_batch: u32,
    /// Longest queue delay with dynamic batching on (ms).
    #[arg(long, default_value_t = 5)]
    max_delay_ms: u32,
    /// Serve the cluster over TLS (a throwaway CA), clients and workers included.
    #[arg(long)]
    tls: bool,
}

/// One run's figures.
struct Run {
    label: String,
    clients: usize,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

pub async fn run(args: OnlineBench) -> anyhow::Result<()> {
    let arch: Arch = args.model.parse()?;
    if args.clients.is_empty() || args.clients.contains(&0) || args.seconds == 0 {
        bail!("clients and seconds must be at least 1");
    }
    let photos = photos()?;
    let limit = forward_limit(arch, &photos).await?;
    println!(
        "limit: {} forward pass alone, 2 threads, batch 8, decoding included: {limit:.1} images/s",
        arch.name()
    );

    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        coordinators: 1,
        storage_nodes: 1,
        workers: 0,
        listen: None,
    };
    let tls_dir = dir.path().join("tls");
    if args.tls {
        idunno::certs::make(&tls_dir, &idunno::certs::LOCAL_HOSTS, false)?;
        println!("TLS on every role and client");
    }
    let mut cluster = EmbeddedCluster::start(dir.path(), &spec, |c| {
        if args.tls {
            c.tls = TlsOptions::from_dir(&tls_dir);
        }
    })
    .await?;
    for _ in 0..2 {
        cluster
            .add_worker(|w| {
                w.threads = Some(1);
            })
            .await?;
    }
    let base_url = cluster
        .transport()
        .scheme()
        .base_url(&cluster.coordinator_addrs()[0]);
    let http = cluster
        .transport()
        .client_builder()
        .tcp_nodelay(true)
        .build()?;
    let client = cluster.client();
    let weights = weights::generate_to_bytes(arch, 1)?;
    let tmp = dir.path().join("weights.safetensors");
    std::fs::write(&tmp, &weights)?;
    client
        .upload_file("models/bench.safetensors", &tmp, None)
        .await?;

    let mut runs = Vec::new();
    for (label, max_batch, delay) in [
        ("dynamic batching", args.max_batch, args.max_delay_ms),
        ("batches of one", 1, 0),
    ] {
        register(&client, arch, max_batch, delay).await?;
        for &n in &args.clients {
            let run = load(&base_url, &http, &photos, n, args.seconds, label).await;
            print_run(&run);
            runs.push(run);
        }
    }

    // Online traffic beside a batch job of the same model, dynamic batching on.
    register(&client, arch, args.max_batch, args.max_delay_ms).await?;
    let names = upload_inputs(&client, &photos, dir.path()).await?;
    let queries = 100_000;
    let job: Job = client
        .post(
            "/v1/jobs",
            &NewJob {
                name: Some("beside".into()),
                model: "bench".into(),
                inputs: Inputs::List(names.iter().cycle().take(queries).cloned().collect()),
                batch_size: 8,
                weight: 1,
                start: true,
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done_before = job_done(&client, job.id).await?;
    let clients = args.clients.iter().copied().max().unwrap_or(16);
    let started = Instant::now();
    let beside = load(
        &base_url,
        &http,
        &photos,
        clients,
        args.seconds,
        "beside a job",
    )
    .await;
    let job_rate =
        (job_done(&client, job.id).await? - done_before) as f64 / started.elapsed().as_secs_f64();
    print_run(&beside);
    let _: serde_json::Value = client
        .post(&format!("/v1/jobs/{}/stop", job.id), &json!({}))
        .await?;
    println!(
        "beside the job: online {:.1} images/s, job {job_rate:.1} queries/s (fair: equal rates at weight 1 each)",
        beside.requests_per_s
    );
    runs.push(beside);
    cluster.shutdown().await;

    println!();
    println!("| run | clients | req/s | p50 (ms) | p99 (ms) | errors |");
    println!("|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            r.label, r.clients, r.requests_per_s, r.p50_ms, r.p99_ms, r.errors
        );
    }
    println!("| forward pass alone (limit) | - | {limit:.1} | - | - | - |");
    let last = runs
        .iter()
        .filter(|r| r.label == "dynamic batching")
        .max_by_key(|r| r.clients)
        .context("no dynamic-batching run")?;
    println!(
        "online {} clients: {:.1} req/s, p99 {:.0} ms",
        last.clients, last.requests_per_s, last.p99_ms
    );
    Ok(())
}

fn print_run(r: &Run) {
    println!(
        "  {:<17} {:>2} clients: {:7.1} req/s  p50 {:6.1} ms  p99 {:6.1} ms  errors {}",
        r.label, r.clients, r.requests_per_s, r.p50_ms, r.p99_ms, r.errors
    );
}

/// (Re-)registers model `bench` with the given online batching.
async fn register(
    client: &Client,
    arch: Arch,
    max_batch: u32,
    delay_ms: u32,
) -> anyhow::Result<()> {
    let _: serde_json::Value = client
        .post(
            "/v1/models",
            &json!({"name": "bench", "arch": arch.name(), "weights": "models/bench.safetensors",
                    "online": {"max_batch_size": max_batch, "max_queue_delay_ms": delay_ms}}),
        )
        .await?;
    Ok(())
}

/// `clients` clients, each sending one single-photo request after another for `seconds`
/// (after a one-second warm-up that is not counted).
async fn load(
    base_url: &str,
    http: &reqwest::Client,
    photos: &[EncodedImage],
    clients: usize,
    seconds: u64,
    label: &str,
) -> Run {
    let url = format!("{base_url}/v2/models/bench/infer");
    let bodies: Arc<Vec<(Vec<u8>, usize)>> =
        Arc::new(photos.iter().map(|(_, b)| request_body(b)).collect());
    let warm_until = Instant::now() + Duration::from_secs(1);
    let until = warm_until + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (http, url, bodies) = (http.clone(), url.clone(), bodies.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut k = i;
                while Instant::now() < until {
                    let (body, header_len) = &bodies[k % bodies.len()];
                    k += 1;
                    let sent = Instant::now();
                    let ok = http
                        .post(&url)
                        .header(HEADER_LENGTH_HEADER, header_len.to_string())
                        .body(body.clone())
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|r| async move { r.bytes().await.is_ok() });
                    let ok = match ok {
                        Some(read) => read.await,
                        None => false,
                    };
                    if sent >= warm_until {
                        if ok {
                            latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                        } else {
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Run {
        label: label.to_string(),
        clients,
        requests_per_s: latencies.len() as f64 / seconds as f64,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors,
    }
}

/// A request for one encoded photo through the binary extension (top-5 classes back, in
/// JSON), and the length of its JSON header.
fn request_body(photo: &[u8]) -> (Vec<u8>, usize) {
    let raw = encode_bytes_elements([photo]);
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}]
    }))
    .unwrap_or_default();
    let len = header.len();
    let mut body = header;
    body.extend_from_slice(&raw);
    (body, len)
}

/// The sample photos' bytes.
fn photos() -> anyhow::Result<Vec<EncodedImage>> {
    let dir = [
        PathBuf::from("samples"),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples"),
    ]
    .into_iter()
    .find(|d| d.is_dir())
    .context("no samples/ folder: run from the IDunno repository")?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if idunno_worker::inputs::is_image_file(&path) {
            out.push((path.to_string_lossy().into_owned(), std::fs::read(&path)?));
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{} holds no images", dir.display());
    }
    Ok(out)
}

/// Uploads the photos as job inputs; their names.
async fn upload_inputs(
    client: &Client,
    photos: &[EncodedImage],
    dir: &std::path::Path,
) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for (i, (path, bytes)) in photos.iter().enumerate() {
        let ext = path.rsplit('.').next().unwrap_or("img");
        let name = format!("online-bench/{i}.{ext}");
        let local = dir.join(format!("photo-{i}.{ext}"));
        std::fs::write(&local, bytes)?;
        client.upload_file(&name, &local, None).await?;
        names.push(name);
    }
    Ok(names)
}

async fn job_done(client: &Client, id: u64) -> anyhow::Result<u64> {
    let job: Job = client.get(&format!("/v1/jobs/{id}")).await?;
    Ok(job.done)
}

/// Images/s of the model's forward pass alone (decoding included) on two threads, batch 8.
async fn forward_limit(arch: Arch, photos: &[EncodedImage]) -> anyhow::Result<f64> {
    let pool = ComputePool::new(2)?;
    let photos = photos.to_vec();
    let rate = pool
        .run(move || -> anyhow::Result<f64> {
            let bytes = weights::generate_to_bytes(arch, 1)?;
            let model = Network::from_safetensors_bytes(arch, bytes, &LoadOptions::default())?;
            Ok(standalone_throughput(&model, &photos, 8, 24)?)
        })
        .await??;
    Ok(rate)
}
