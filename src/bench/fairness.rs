//! `idunno bench fairness`: the original reports' fairness questions, answered on real
//! processes (3 coordinators, a storage node, ≥ 2 workers) with real models: job A (a cheap
//! model) runs alone, job B (a costly one) is submitted, and the run is read back from the
//! replicated batch records (lease and completion stamps, worker compute times).
//!
//! Per trial: (1a) each job's share of worker time over the measured windows, beside the
//! share fair-time should give (weight × measured cost per query); (1b) milliseconds from B's
//! submission to its first lease and to its first result; the rate gap (max/min − 1) in
//! every 10 s window after the settling period; and A's lowest 10 s rate while B ramps up,
//! as a fraction of the fair rate (the two jobs' mean rate once settled).
//!
//! A rate is counted two ways. *Completions*: the queries of the batches that completed in
//! the window, as `done` advances (the closing `rate gap` line). *Processing*: each batch's
//! queries spread over its compute interval (the worker's measured compute time, ending when
//! it completed). Both move by whole batches: when a window holds only a few batches of a
//! job, one batch more or less is a large gap whatever the scheduler does, so each trial also
//! prints that floor — one batch as a share of the job's queries in a window.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use idunno_api::job::{BatchInfo, BatchStateInfo, Inputs, Job, NewJob};
use idunno_api::model::Model;
use idunno_api::Client;

use crate::cli::model::{add, Shape, WeightsSource};
use idunno::processes::{CoordinatorGroup, StorageNodeProcess, WorkerProcess};

/// A rate window.
const WINDOW_MS: u64 = 10_000;

#[derive(Debug, Args)]
pub struct FairnessBench {
    /// Job A's architecture: the cheap model, running first.
    #[arg(long, default_value = "efficientnet_lite0")]
    a: String,
    /// Job B's architecture: the costly model, submitted while A runs.
    #[arg(long, default_value = "resnet152")]
    b: String,
    /// Batch sizes (both jobs use the same one); every trial runs at each.
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    batch_sizes: Vec<u32>,
    /// Trials per batch size.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Compute threads per worker (1: a core each, as workers on machines of their own).
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
    /// Seconds job A runs alone before B is submitted.
    #[arg(long, default_value_t = 5)]
    alone_s: u64,
    /// Seconds after B's submission before the measured windows start.
    #[arg(long, default_value_t = 10)]
    settle_s: u64,
    /// Measured 10 s windows per trial.
    #[arg(long, default_value_t = 2)]
    windows: u64,
    /// Queries per job (default: more than 150 queries/s would get through in a trial).
    #[arg(long)]
    queries: Option<usize>,
    /// Folder for the processes' data and logs (default: a temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// What one trial measured.
#[derive(Debug, Clone)]
struct Trial {
    /// How long `POST /v1/jobs` of B took (its lease can come no sooner).
    submit_ms: f64,
    first_lease_ms: f64,
    first_result_ms: f64,
    share_a: f64,
    share_b: f64,
    /// Fair-time's share for A: A's cost per query over the sum of both.
    fair_share_a: f64,
    /// Rate gaps of the measured windows, counted by completions and by processing.
    gaps_done: Vec<f64>,
    gaps_processing: Vec<f64>,
    /// Mean rates (queries/s) over the measured windows, by processing.
    rate_a: f64,
    rate_b: f64,
    /// One batch as a fraction of the queries of a window, for the slower job.
    floor: f64,
    /// A's lowest 10 s processing rate while B ramps up, over the fair rate.
    ramp_low: f64,
}

pub async fn run(args: FairnessBench) -> anyhow::Result<()> {
    if args.batch_sizes.is_empty() || args.trials == 0 || args.windows == 0 || args.workers < 1 {
        bail!("need batch sizes, at least one trial, one window and one worker");
    }
    let group = CoordinatorGroup::start(3, args.dir.as_deref())?;
    group.wait_for_leader(Duration::from_secs(20)).await?;
    let mut node = StorageNodeProcess::new("s1", group.dir(), &group.addrs())?;
    node.start()?;
    let extra = vec![
        "--threads".to_string(),
        args.worker_threads.to_string(),
        "--batch-wait-ms".into(),
        "10000".into(),
    ];
    let mut workers: Vec<WorkerProcess> = (1..=args.workers)
        .map(|i| WorkerProcess::new(&format!("w{i}"), group.dir(), &group.addrs(), &extra))
        .collect();
    for w in &mut workers {
        w.start()?;
    }
    let client = group.client()?.with_deadline(Duration::from_secs(60));
    let outcome = trials(&args, &client).await;
    drop(workers);
    drop(node);
    drop(group);
    outcome
}

async fn trials(args: &FairnessBench, client: &Client) -> anyhow::Result<()> {
    let queries = args.queries.unwrap_or_else(|| {
        let seconds = args.alone_s + args.settle_s + args.windows * WINDOW_MS / 1000 + 10;
        (seconds as usize * 150).min(MAX_QUERIES)
    });
    let inputs = upload_samples(client, queries).await?;
    for (name, arch) in [("a", &args.a), ("b", &args.b)] {
        let source = weights_for(arch);
        add(client, name, arch, &source, Shape::default())
            .await
            .with_context(|| format!("registering {arch}"))?;
        let _: Model = client.post(&format!("/v1/models/{name}/load"), &()).await?;
    }
    wait_loaded(client, &["a", "b"], args.workers).await?;
    println!(
        "3 coordinators, 1 storage node, {} workers × {} thread(s); A = {}, B = {}; \
         A alone {} s, then B; settle {} s; {} windows of 10 s; {} trials per batch size",
        args.workers,
        args.worker_threads,
        args.a,
        args.b,
        args.alone_s,
        args.settle_s,
        args.windows,
        args.trials
    );
    let mut all: Vec<(u32, Vec<Trial>)> = Vec::new();
    for &batch in &args.batch_sizes {
        println!("\nbatch {batch}");
        println!(
            "  trial  submit  first lease  first result  share A/B (fair A)    gap done  gap proc  \
             1 batch  rate A/B (q/s)  A ramp low"
        );
        let mut done = Vec::new();
        for t in 1..=args.trials {
            let trial = trial(args, client, &inputs, batch).await?;
            println!(
                "  {t:>5}  {:>3.0} ms  {:>8.0} ms  {:>9.0} ms  {:>4.1} % / {:>4.1} % ({:>4.1} %)  \
                 {:>6.1} %  {:>6.1} %  {:>5.1} %  {:>6.1} / {:<6.1}  {:>6.1} %",
                trial.submit_ms,
                trial.first_lease_ms,
                trial.first_result_ms,
                trial.share_a * 100.0,
                trial.share_b * 100.0,
                trial.fair_share_a * 100.0,
                max(&trial.gaps_done) * 100.0,
                max(&trial.gaps_processing) * 100.0,
                trial.floor * 100.0,
                trial.rate_a,
                trial.rate_b,
                trial.ramp_low * 100.0
            );
            done.push(trial);
        }
        print_summary(&done);
        all.push((batch, done));
    }
    let trials: Vec<&Trial> = all.iter().flat_map(|(_, t)| t).collect();
    let first_lease = mean(&trials.iter().map(|t| t.first_lease_ms).collect::<Vec<_>>());
    let gap_done = trials.iter().map(|t| max(&t.gaps_done)).fold(0.0, f64::max);
    let gap_processing = trials
        .iter()
        .map(|t| max(&t.gaps_processing))
        .fold(0.0, f64::max);
    let ramp = trials.iter().map(|t| t.ramp_low).fold(f64::MAX, f64::min);
    println!(
        "\nlargest gap counted by processing: {:.1} %; A's lowest ramp-up rate: {:.1} % of fair",
        gap_processing * 100.0,
        ramp * 100.0
    );
    println!("first lease: {first_lease:.1} ms");
    println!("rate gap: {:.1} %", gap_done * 100.0);
    Ok(())
}

/// One trial: A alone, then B; both stopped and deleted after the windows.
async fn trial(
    args: &FairnessBench,
    client: &Client,
    inputs: &[String],
    batch: u32,
) -> anyhow::Result<Trial> {
    let job = |model: &str| NewJob {
        name: Some(format!("fair-{model}")),
        model: model.to_string(),
        inputs: Inputs::List(inputs.to_vec()),
        batch_size: batch,
        weight: 1,
        start: true,
    };
    let a: Job = client.post("/v1/jobs", &job("a")).await?;
    tokio::time::sleep(Duration::from_secs(args.alone_s)).await;
    let t0 = now_ms();
    let b: Job = client.post("/v1/jobs", &job("b")).await?;
    let submit_ms = now_ms().saturating_sub(t0) as f64;
    let end = t0 + args.settle_s * 1000 + args.windows * WINDOW_MS;
    tokio::time::sleep(Duration::from_millis(end.saturating_sub(now_ms()) + 500)).await;
    for id in [a.id, b.id] {
        let _: Job = client.post(&format!("/v1/jobs/{id}/stop"), &()).await?;
    }
    let batches_a: Vec<BatchInfo> = client.get(&format!("/v1/jobs/{}/batches", a.id)).await?;
    let batches_b: Vec<BatchInfo> = client.get(&format!("/v1/jobs/{}/batches", b.id)).await?;
    // Let the batches in hand finish before the next trial, then clean up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [a.id, b.id] {
        client.delete(&format!("/v1/jobs/{id}")).await?;
    }
    let a = Spans::of(&batches_a);
    let b = Spans::of(&batches_b);
    let first_lease = batches_b
        .iter()
        .filter_map(|x| match &x.state {
            BatchStateInfo::Leased { leased_at_ms, .. }
            | BatchStateInfo::Done { leased_at_ms, .. } => Some(*leased_at_ms),
            BatchStateInfo::Pending => None,
        })
        .min()
        .context("job B was never leased")?;
    let first_result =
        b.0.iter()
            .map(|s| s.end)
            .min()
            .context("job B never completed a batch")?;
    let measured_from = t0 + args.settle_s * 1000;
    let mut gaps_done = Vec::new();
    let mut gaps_processing = Vec::new();
    let (mut sum_a, mut sum_b) = (0.0, 0.0);
    for k in 0..args.windows {
        let (s, e) = (
            measured_from + k * WINDOW_MS,
            measured_from + (k + 1) * WINDOW_MS,
        );
        gaps_done.push(gap(a.completed(s, e), b.completed(s, e)));
        let (pa, pb) = (a.processed(s, e), b.processed(s, e));
        gaps_processing.push(gap(pa, pb));
        sum_a += pa;
        sum_b += pb;
    }
    let windows = args.windows as f64;
    let (rate_a, rate_b) = (
        sum_a / windows / (WINDOW_MS as f64 / 1e3),
        sum_b / windows / (WINDOW_MS as f64 / 1e3),
    );
    let (busy_a, busy_b) = (a.busy(measured_from, end), b.busy(measured_from, end));
    let fair_rate = (rate_a + rate_b) / 2.0;
    let ramp_low = (0..=args.settle_s)
        .map(|i| {
            let s = t0 + i * 1000;
            a.processed(s, s + WINDOW_MS) / (WINDOW_MS as f64 / 1e3) / fair_rate.max(1e-9)
        })
        .fold(f64::MAX, f64::min);
    let (cost_a, cost_b) = (a.cost_per_query(), b.cost_per_query());
    let slower = rate_a.min(rate_b).max(1e-9) * WINDOW_MS as f64 / 1e3;
    Ok(Trial {
        floor: f64::from(batch) / slower,
        submit_ms,
        first_lease_ms: first_lease.saturating_sub(t0) as f64,
        first_result_ms: first_result.saturating_sub(t0) as f64,
        share_a: busy_a / (busy_a + busy_b).max(1e-9),
        share_b: busy_b / (busy_a + busy_b).max(1e-9),
        fair_share_a: cost_a / (cost_a + cost_b).max(1e-9),
        gaps_done,
        gaps_processing,
        rate_a,
        rate_b,
        ramp_low,
    })
}

/// A completed batch: its queries and its compute interval (ms since the epoch).
#[derive(Debug, Clone, Copy)]
struct Span {
    queries: f64,
    start: u64,
    end: u64,
}

/// A job's completed batches.
struct Spans(Vec<Span>);

impl Spans {
    fn of(batches: &[BatchInfo]) -> Spans {
        Spans(
            batches
                .iter()
                .filter_map(|b| match &b.state {
                    BatchStateInfo::Done {
                        compute_ms,
                        completed_at_ms,
                        ..
                    } => Some(Span {
                        queries: f64::from(b.len),
                        start: completed_at_ms.saturating_sub(*compute_ms),
                        end: *completed_at_ms,
                    }),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Queries of the batches that completed in `(s, e]`.
    fn completed(&self, s: u64, e: u64) -> f64 {
        self.0
            .iter()
            .filter(|x| x.end > s && x.end <= e)
            .map(|x| x.queries)
            .sum()
    }

    /// Queries processed in `(s, e]`: each batch's spread over its compute interval.
    fn processed(&self, s: u64, e: u64) -> f64 {
        self.0
            .iter()
            .map(|x| {
                let overlap = x.end.min(e).saturating_sub(x.start.max(s)) as f64;
                let span = x.end.saturating_sub(x.start).max(1) as f64;
                if x.end == x.start {
                    // No compute time reported: count it at its end.
                    if x.end > s && x.end <= e {
                        x.queries
                    } else {
                        0.0
                    }
                } else {
                    x.queries * overlap / span
                }
            })
            .sum()
    }

    /// Worker milliseconds inside `(s, e]`.
    fn busy(&self, s: u64, e: u64) -> f64 {
        self.0
            .iter()
            .map(|x| x.end.min(e).saturating_sub(x.start.max(s)) as f64)
            .sum()
    }

    /// Worker milliseconds per query over every batch.
    fn cost_per_query(&self) -> f64 {
        let queries: f64 = self.0.iter().map(|x| x.queries).sum();
        let busy: f64 = self.0.iter().map(|x| (x.end - x.start) as f64).sum();
        busy / queries.max(1.0)
    }
}

fn print_summary(trials: &[Trial]) {
    let col = |f: &dyn Fn(&Trial) -> f64| {
        let v: Vec<f64> = trials.iter().map(f).collect();
        (mean(&v), std(&v))
    };
    let (fl, fl_s) = col(&|t| t.first_lease_ms);
    let (fr, fr_s) = col(&|t| t.first_result_ms);
    let (sa, sa_s) = col(&|t| t.share_a * 100.0);
    let (sb, sb_s) = col(&|t| t.share_b * 100.0);
    let (fa, _) = col(&|t| t.fair_share_a * 100.0);
    let (gd, gd_s) = col(&|t| max(&t.gaps_done) * 100.0);
    let (gp, gp_s) = col(&|t| max(&t.gaps_processing) * 100.0);
    let (ra, ra_s) = col(&|t| t.ramp_low * 100.0);
    println!(
        "  mean ± std: (1a) share A {sa:.1} ± {sa_s:.1} %, B {sb:.1} ± {sb_s:.1} % (fair-time: A \
         {fa:.1} %); (1b) first lease {fl:.0} ± {fl_s:.0} ms, first result {fr:.0} ± {fr_s:.0} \
         ms; largest window gap {gp:.1} ± {gp_s:.1} % by processing, {gd:.1} ± {gd_s:.1} % by \
         completions; A's lowest ramp-up rate {ra:.1} ± {ra_s:.1} % of fair"
    );
}

/// max/min − 1; infinite when one job completed nothing in the window (its batches take
/// longer than a window), 0 when neither did.
fn gap(a: f64, b: f64) -> f64 {
    match (a > 0.0, b > 0.0) {
        (true, true) => a.max(b) / a.min(b) - 1.0,
        (false, false) => 0.0,
        _ => f64::INFINITY,
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / (v.len().max(1) as f64)
}

/// Sample standard deviation (0 for fewer than two values).
fn std(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The real Lite0 weights when `models/` has them, else seeded weights.
fn weights_for(arch: &str) -> WeightsSource {
    let lite0 = Path::new("weights/efficientnet_lite0.safetensors");
    if arch == "efficientnet_lite0" && lite0.is_file() {
        WeightsSource::Local(lite0.to_path_buf())
    } else {
        WeightsSource::Generate(1)
    }
}

/// Most queries a job may list.
const MAX_QUERIES: usize = 100_000;

/// Puts the sample photos into SDFS; a job's `queries` inputs cycle through them.
async fn upload_samples(client: &Client, queries: usize) -> anyhow::Result<Vec<String>> {
    let dir = Path::new("samples");
    if !dir.is_dir() {
        bail!("no samples/ folder: run from the IDunno repository");
    }
    let mut names = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| idunno_worker::inputs::is_image_file(p))
        .collect();
    entries.sort();
    for path in entries {
        let name = format!(
            "fairness/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        client.upload_file(&name, &path, None).await?;
        names.push(name);
    }
    if names.is_empty() {
        bail!("samples/ holds no images");
    }
    Ok((0..queries.clamp(1, MAX_QUERIES))
        .map(|i| names[i % names.len()].clone())
        .collect())
}

/// Waits until every worker has loaded every model.
async fn wait_loaded(client: &Client, models: &[&str], workers: usize) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    for name in models {
        loop {
            let m: Model = client.get(&format!("/v1/models/{name}")).await?;
            if m.loaded_on.len() >= workers {
                break;
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("model {name} not loaded on {workers} workers after 5 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
