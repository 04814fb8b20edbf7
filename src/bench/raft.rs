//! `idunno bench raft`: (a) lease+complete pairs per second through a 3-process coordinator
//! group with durable sled storage, driven over HTTP by simulated workers; (b) leader failover:
//! SIGKILL the leader process N times and time until a write commits again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use idunno_api::job::{Inputs, Job, JobPatch, NewJob};
use idunno_api::model::NewModel;
use idunno_api::worker::{
    Completion, CompletionAck, LeaseAnswer, LeaseRequest, WorkerRegistered, WorkerRegistration,
};
use idunno_api::Client;
use reqwest::{Method, StatusCode};

use super::summary;
use idunno::processes::CoordinatorGroup;

#[derive(Debug, Args)]
pub struct RaftBench {
    /// Concurrent simulated workers.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Measured seconds of the throughput phase (after 2 s of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Leader kills in the failover phase (0 skips it).
    #[arg(long, default_value_t = 10)]
    failovers: usize,
    /// Where the data folders go (default: the system temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(args: RaftBench) -> anyhow::Result<()> {
    let mut group = CoordinatorGroup::start(3, args.dir.as_deref())?;
    let leader = group.wait_for_leader(Duration::from_secs(20)).await?;
    println!("3 coordinators up; leader is node {}", leader.node_id);
    let client = group.client()?;
    client
        .post::<_, serde_json::Value>(
            "/v1/models",
            &NewModel {
                name: "bench".into(),
                arch: "resnet18".into(),
                weights: "models/bench.safetensors".into(),
                input_size: None,
                cost_ms: None,
            },
        )
        .await?;
    let inputs: Vec<String> = (0..100_000).map(|i| format!("in/{i:06}")).collect();
    let job: Job = client
        .post(
            "/v1/jobs",
            &NewJob {
                name: Some("bench".into()),
                model: "bench".into(),
                inputs: Inputs::List(inputs),
                batch_size: 1,
                weight: 1,
                start: true,
            },
        )
        .await?;

    throughput(&args, &leader.addr, &group.addrs()).await?;
    if args.failovers > 0 {
        failover(&args, &mut group, job.id).await?;
    }
    Ok(())
}

async fn throughput(args: &RaftBench, leader: &str, all: &[String]) -> anyhow::Result<()> {
    let mut order = vec![leader.to_string()];
    order.extend(all.iter().filter(|a| *a != leader).cloned());
    let client = Client::new(&order, None)?;
    let pairs = Arc::new(AtomicU64::new(0));
    let lease_ns = Arc::new(AtomicU64::new(0));
    let complete_ns = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(2 + args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.workers {
        let client = client.clone();
        let (pairs, lease_ns, complete_ns) = (pairs.clone(), lease_ns.clone(), complete_ns.clone());
        tasks.push(tokio::spawn(async move {
            let reg: WorkerRegistered = client
                .post("/v1/workers/register", &WorkerRegistration::default())
                .await?;
            let lease_path = format!("/v1/workers/{}/lease", reg.worker_id);
            while Instant::now() < stop_at {
                let t = Instant::now();
                let (status, body) = client
                    .call(
                        Method::POST,
                        &lease_path,
                        Some(&LeaseRequest {
                            wait_ms: 1000,
                            ..Default::default()
                        }),
                        Some(Duration::from_secs(2)),
                    )
                    .await?;
                lease_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                if status == StatusCode::NO_CONTENT {
                    continue;
                }
                let answer: LeaseAnswer = serde_json::from_slice(&body)?;
                let Some(lease) = answer.lease else { continue };
                let t = Instant::now();
                let _: CompletionAck = client
                    .post(
                        &format!("/v1/batches/{}/complete", lease.batch_id),
                        &Completion {
                            lease_id: lease.lease_id,
                            result: format!("results/{}", lease.batch_id),
                            failed: 0,
                            compute_ms: 0,
                        },
                    )
                    .await?;
                complete_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                pairs.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p0, l0, c0) = (
        pairs.load(Ordering::Relaxed),
        lease_ns.load(Ordering::Relaxed),
        complete_ns.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let done = pairs.load(Ordering::Relaxed) - p0;
    let lease_ms = (lease_ns.load(Ordering::Relaxed) - l0) as f64 / 1e6 / done.max(1) as f64;
    let complete_ms = (complete_ns.load(Ordering::Relaxed) - c0) as f64 / 1e6 / done.max(1) as f64;
    for t in tasks {
        t.await.context("worker task")??;
    }
    let rate = done as f64 / elapsed;
    println!(
        "\n## lease+complete throughput ({} simulated workers, {elapsed:.1} s)",
        args.workers
    );
    println!("| pairs/s | commits/s | mean lease call | mean complete call |");
    println!("|---|---|---|---|");
    println!(
        "| {rate:.0} | {:.0} | {lease_ms:.2} ms | {complete_ms:.2} ms |",
        rate * 2.0
    );
    Ok(())
}

async fn failover(args: &RaftBench, group: &mut CoordinatorGroup, job: u64) -> anyhow::Result<()> {
    let client = group.client()?.with_deadline(Duration::from_secs(60));
    let mut samples = Vec::new();
    println!("\n## leader failover (SIGKILL the leader, time until a write commits)");
    println!("| round | killed | new leader | seconds |");
    println!("|---|---|---|---|");
    for round in 0..args.failovers {
        let status = group.wait_for_leader(Duration::from_secs(20)).await?;
        let victim = status.node_id;
        let index = group
            .nodes
            .iter()
            .position(|n| n.id == victim)
            .context("leader not in the group")?;
        group.nodes[index].kill();
        let t = Instant::now();
        let patch = JobPatch {
            batch_size: None,
            weight: Some(round as u32 % 5 + 1),
        };
        let _: Job = client.patch(&format!("/v1/jobs/{job}"), &patch).await?;
        let secs = t.elapsed().as_secs_f64();
        samples.push(secs);
        let new_leader = group.wait_for_leader(Duration::from_secs(20)).await?;
        println!(
            "| {} | {victim} | {} | {secs:.3} |",
            round + 1,
            new_leader.node_id
        );
        group.nodes[index].start()?;
        wait_caught_up(group, &group.nodes[index].addr.clone(), &new_leader.addr).await?;
    }
    let (mean, p50, max) = summary(&samples);
    println!(
        "\nfailover over {} kills: mean {mean:.3} s, p50 {p50:.3} s, max {max:.3} s",
        samples.len()
    );
    Ok(())
}

/// Waits until the restarted node has applied everything the leader had committed.
async fn wait_caught_up(group: &CoordinatorGroup, node: &str, leader: &str) -> anyhow::Result<()> {
    use idunno_api::cluster::ClusterStatus;
    let target: ClusterStatus = Client::new(&[leader.to_string()], None)?
        .get("/v1/cluster")
        .await?;
    let want = target.commit_index.unwrap_or(0);
    let client = Client::new(&[node.to_string()], None)?.with_deadline(Duration::from_millis(500));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(s) = client.get::<ClusterStatus>("/v1/cluster").await {
            if s.applied_index.unwrap_or(0) >= want && s.leader_id.is_some() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = group;
    anyhow::bail!("node {node} did not catch up")
}
