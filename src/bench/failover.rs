//! `idunno bench failover`: the return to normal inference after failures, as the original
//! reports timed it, on real processes (3 coordinators, 2 storage nodes, worker processes)
//! running a job of the synthetic model:
//!
//! (a) SIGKILL of the leader → seconds until a write commits again, and until the job's rate
//!     is back: the first moment from which the next 2 s run at ≥ 90 % of the rate of the
//!     5 s before the kill;
//! (b) SIGKILL of a worker holding leases (restarted at once, as a supervisor would; it
//!     registers as a new worker) → seconds until every batch it held is leased to another
//!     worker, and until the rate is back (as in (a));
//! (c) the leader killed (and restarted) every 2 s for 30 s → the job's throughput as a
//!     fraction of the 30 s before, undisturbed.
//!
//! The job's progress is sampled every 100 ms from every coordinator's own copy
//! (`?stale=true`), so a failover does not stall the measurement.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use idunno::processes::{CoordinatorGroup, StorageNodeProcess, WorkerProcess};
use idunno_api::job::{BatchInfo, BatchStateInfo, Inputs, Job, NewJob};
use idunno_api::model::Model;
use idunno_api::worker::WorkerInfo;
use idunno_api::Client;

use super::summary;
use crate::cli::model::{add, Shape, WeightsSource};

#[derive(Debug, Args)]
pub struct FailoverBench {
    /// Trials of each of (a) and (b).
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// CPU milliseconds per query of the synthetic model the job runs.
    #[arg(long, default_value_t = 10)]
    cost_ms: u32,
    /// Queries per batch.
    #[arg(long, default_value_t = 4)]
    batch_size: u32,
    /// Seconds of phase (c), disturbed and undisturbed alike (0 skips it).
    #[arg(long, default_value_t = 30)]
    churn_s: u64,
    /// Folder for the processes' data and logs (default: a temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The job's `done` over time: (ms since the epoch, done).
type Samples = Arc<Mutex<Vec<(u64, u64)>>>;

pub async fn run(args: FailoverBench) -> anyhow::Result<()> {
    if args.trials == 0 || args.workers < 2 {
        bail!("need at least one trial and two workers");
    }
    let mut group = CoordinatorGroup::start(3, args.dir.as_deref())?;
    group.wait_for_leader(Duration::from_secs(20)).await?;
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let mut node = StorageNodeProcess::new(&format!("s{i}"), group.dir(), &group.addrs())?;
        node.start()?;
        nodes.push(node);
    }
    let extra = vec!["--threads".to_string(), "1".into()];
    let mut workers: Vec<WorkerProcess> = (1..=args.workers)
        .map(|i| WorkerProcess::new(&format!("w{i}"), group.dir(), &group.addrs(), &extra))
        .collect();
    for w in &mut workers {
        w.start()?;
    }
    let client = group.client()?.with_deadline(Duration::from_secs(60));
    let outcome = measure(&args, &mut group, &mut workers, &client).await;
    drop(workers);
    drop(nodes);
    drop(group);
    outcome
}

async fn measure(
    args: &FailoverBench,
    group: &mut CoordinatorGroup,
    workers: &mut [WorkerProcess],
    client: &Client,
) -> anyhow::Result<()> {
    let job = setup(args, client).await?;
    let samples: Samples = Arc::default();
    let sampler = tokio::spawn(sample(group.addrs(), job, samples.clone()));
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!(
        "3 coordinators, 2 storage nodes, {} workers × 1 thread; job {job}: synthetic model, \
         {} ms per query, batches of {}; rate before each kill: {:.1} queries/s",
        args.workers,
        args.cost_ms,
        args.batch_size,
        rate(
            &samples.lock().unwrap_or_else(|p| p.into_inner()),
            now_ms(),
            5_000
        )
    );

    println!("\n## (a) leader SIGKILL");
    println!("| trial | killed | write commits (s) | rate back (s) |");
    println!("|---|---|---|---|");
    let (mut commit, mut leader_back) = (Vec::new(), Vec::new());
    for trial in 1..=args.trials {
        let status = group.wait_for_leader(Duration::from_secs(20)).await?;
        let index = group
            .nodes
            .iter()
            .position(|n| n.id == status.node_id)
            .context("the leader is not in the group")?;
        let killed_at = now_ms();
        group.nodes[index].kill();
        let committed = committed_write(client).await?;
        let back = rate_back(&samples, killed_at).await;
        println!(
            "| {trial} | {} | {committed:.3} | {} |",
            status.node_id,
            fmt(back)
        );
        commit.push(committed);
        leader_back.extend(back);
        group.nodes[index].start()?;
        tokio::time::sleep(Duration::from_secs(4)).await;
    }

    println!("\n## (b) worker SIGKILL");
    println!("| trial | batches held | leased again (s) | rate back (s) |");
    println!("|---|---|---|---|");
    let (mut released, mut worker_back) = (Vec::new(), Vec::new());
    for trial in 1..=args.trials {
        let index = trial % workers.len();
        let name = workers[index].name.clone();
        let held = held_by(client, job, &name).await?;
        let killed_at = now_ms();
        workers[index].kill();
        // Restarted at once, as a supervisor would: it registers as a new worker.
        workers[index].start()?;
        let relet = leased_again(client, job, &held, killed_at).await?;
        let back = rate_back(&samples, killed_at).await;
        println!(
            "| {trial} | {} | {relet:.3} | {} |",
            held.1.len(),
            fmt(back)
        );
        released.push(relet);
        worker_back.extend(back);
        tokio::time::sleep(Duration::from_secs(4)).await;
    }

    if args.churn_s > 0 {
        println!("\n## (c) leader killed every 2 s for {} s", args.churn_s);
        let span = Duration::from_secs(args.churn_s);
        let before = done_now(&samples);
        tokio::time::sleep(span).await;
        let quiet = done_now(&samples) - before;
        let start = done_now(&samples);
        let t = Instant::now();
        while t.elapsed() < span {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Ok(status) = group.wait_for_leader(Duration::from_secs(5)).await {
                if let Some(node) = group.nodes.iter_mut().find(|n| n.id == status.node_id) {
                    node.kill();
                    node.start()?;
                }
            }
        }
        let churned = done_now(&samples) - start;
        println!("| undisturbed queries | with churn | fraction |");
        println!("|---|---|---|");
        println!(
            "| {quiet} | {churned} | {:.2} |",
            churned as f64 / quiet.max(1) as f64
        );
    }
    sampler.abort();

    let line = |what: &str, v: &[f64]| {
        let (mean, p50, max) = summary(v);
        println!(
            "{what}: mean {mean:.3} s, p50 {p50:.3} s, max {max:.3} s ({} samples)",
            v.len()
        );
    };
    println!();
    line("(a) leader kill → write commits", &commit);
    line("(a) leader kill → rate back", &leader_back);
    line("(b) worker kill → its batches leased again", &released);
    line("(b) worker kill → rate back", &worker_back);
    println!("leader recovery p50: {:.3} s", summary(&leader_back).1);
    println!("worker recovery p50: {:.3} s", summary(&released).1);
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.3}"))
}

/// Registers the synthetic model, waits until every worker loaded it, starts a long job.
async fn setup(args: &FailoverBench, client: &Client) -> anyhow::Result<u64> {
    let png = {
        let img =
            image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([7, (x * 30) as u8, (y * 30) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)?;
        out.into_inner()
    };
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("tiny.png");
    std::fs::write(&local, png)?;
    client.upload_file("bench/tiny.png", &local, None).await?;
    let shape = Shape {
        input_size: None,
        cost_ms: Some(args.cost_ms),
        online: Default::default(),
    };
    add(
        client,
        "syn",
        "synthetic",
        &WeightsSource::Generate(1),
        shape,
    )
    .await?;
    let _: Model = client.post("/v1/models/syn/load", &()).await?;
    let started = Instant::now();
    while client.get::<Model>("/v1/models/syn").await?.loaded_on.len() < args.workers {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the workers did not load the model");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job: Job = client
        .post(
            "/v1/jobs",
            &NewJob {
                name: Some("failover".into()),
                model: "syn".into(),
                inputs: Inputs::List(vec!["bench/tiny.png".to_string(); 100_000]),
                batch_size: args.batch_size,
                weight: 1,
                start: true,
            },
        )
        .await?;
    Ok(job.id)
}

/// Every 100 ms, the largest `done` any coordinator's own copy reports.
async fn sample(addrs: Vec<String>, job: u64, samples: Samples) {
    let clients: Vec<Client> = addrs
        .iter()
        .filter_map(|a| Client::new(std::slice::from_ref(a), None).ok())
        .map(|c| c.with_deadline(Duration::from_millis(80)))
        .collect();
    let path = format!("/v1/jobs/{job}?stale=true");
    loop {
        let reads = clients.iter().map(|c| c.get::<Job>(&path));
        let done = futures::future::join_all(reads)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .map(|j| j.done)
            .max();
        if let Some(done) = done {
            let mut s = samples.lock().unwrap_or_else(|p| p.into_inner());
            let best = s.last().map_or(done, |(_, d)| (*d).max(done));
            s.push((now_ms(), best));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `done` at the newest sample.
fn done_now(samples: &Samples) -> u64 {
    samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last()
        .map_or(0, |(_, d)| *d)
}

/// `done` at time `t` (the last sample at or before it).
fn done_at(samples: &[(u64, u64)], t: u64) -> u64 {
    samples
        .iter()
        .take_while(|(at, _)| *at <= t)
        .last()
        .map_or(0, |(_, d)| *d)
}

/// Queries/s over the `span_ms` before `t`.
fn rate(samples: &[(u64, u64)], t: u64, span_ms: u64) -> f64 {
    let d = done_at(samples, t).saturating_sub(done_at(samples, t.saturating_sub(span_ms)));
    d as f64 * 1000.0 / span_ms as f64
}

/// Seconds from `killed_at` to the first moment from which the next 2 s run at ≥ 90 % of
/// the rate of the 5 s before the kill (waits up to 20 s).
async fn rate_back(samples: &Samples, killed_at: u64) -> Option<f64> {
    let deadline = killed_at + 20_000;
    loop {
        {
            let s = samples.lock().unwrap_or_else(|p| p.into_inner());
            let before = rate(&s, killed_at, 5_000);
            let newest = s.last().map_or(0, |(t, _)| *t);
            let mut t = killed_at;
            while t + 2_000 <= newest {
                if rate(&s, t + 2_000, 2_000) >= 0.9 * before {
                    return Some((t - killed_at) as f64 / 1e3);
                }
                t += 100;
            }
        }
        if now_ms() > deadline + 2_000 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The id of worker `name` and the batches (id, lease) it holds now.
async fn held_by(
    client: &Client,
    job: u64,
    name: &str,
) -> anyhow::Result<(String, Vec<(String, u64)>)> {
    let started = Instant::now();
    loop {
        let workers: Vec<WorkerInfo> = client.get("/v1/workers").await?;
        let id = workers
            .iter()
            .filter(|w| w.name == name)
            .min_by_key(|w| w.last_seen_ms_ago)
            .map(|w| w.id.clone());
        if let Some(id) = id {
            let leased: Vec<BatchInfo> = client
                .get(&format!("/v1/jobs/{job}/batches?state=leased"))
                .await?;
            let held: Vec<(String, u64)> = leased
                .iter()
                .filter_map(|b| match &b.state {
                    BatchStateInfo::Leased {
                        worker, lease_id, ..
                    } if *worker == id => Some((b.id.clone(), *lease_id)),
                    _ => None,
                })
                .collect();
            if !held.is_empty() {
                return Ok((id, held));
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("worker {name} held no lease for 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds from `killed_at` until every batch in `held` was leased to another worker (or
/// done by one), from the new leases' stamps. A batch the dead worker completed just before
/// it died needs no new lease.
async fn leased_again(
    client: &Client,
    job: u64,
    held: &(String, Vec<(String, u64)>),
    killed_at: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        let batches: Vec<BatchInfo> = client.get(&format!("/v1/jobs/{job}/batches")).await?;
        let mut latest = 0;
        let mut all = true;
        for (id, lease) in &held.1 {
            match batches.iter().find(|b| b.id == *id).map(|b| &b.state) {
                Some(BatchStateInfo::Leased {
                    lease_id,
                    leased_at_ms,
                    ..
                }) if lease_id != lease => latest = latest.max(*leased_at_ms),
                Some(BatchStateInfo::Done {
                    leased_at_ms,
                    worker,
                    ..
                }) => {
                    // Done by another worker after a new lease; or by the dead one, whose
                    // completion landed just before the kill (nothing to lease again).
                    if *worker != held.0 {
                        latest = latest.max(*leased_at_ms);
                    }
                }
                _ => all = false,
            }
        }
        if all {
            return Ok(latest.saturating_sub(killed_at) as f64 / 1e3);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the dead worker's batches were not leased again within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds until a write commits: a delete of a model that cannot exist, a committed no-op
/// (404), tried until a coordinator answers it.
async fn committed_write(client: &Client) -> anyhow::Result<f64> {
    let t = Instant::now();
    loop {
        match client
            .delete("/v1/models/no-such-model-failover-probe")
            .await
        {
            Err(e) if e.status() == Some(404) => return Ok(t.elapsed().as_secs_f64()),
            Ok(()) => return Ok(t.elapsed().as_secs_f64()),
            Err(_) if t.elapsed() < Duration::from_secs(30) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
