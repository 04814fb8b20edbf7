//! `idunno bench raft`: lease+complete pairs per second through a 3-process coordinator group
//! with durable sled storage, driven over HTTP by simulated workers. (Failover times are
//! `idunno bench failover`'s.)

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use idunno_api::job::{Inputs, Job, NewJob};
use idunno_api::model::NewModel;
use idunno_api::worker::{
    Completion, CompletionAck, LeaseAnswer, LeaseRequest, WorkerRegistered, WorkerRegistration,
};
use idunno_api::Client;
use reqwest::{Method, StatusCode};

use idunno::processes::CoordinatorGroup;

#[derive(Debug, Args)]
pub struct RaftBench {
    /// Concurrent simulated workers.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Measured seconds of the throughput phase (after 2 s of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Where the data folders go (default: the system temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(args: RaftBench) -> anyhow::Result<()> {
    let group = CoordinatorGroup::start(3, args.dir.as_deref())?;
    let leader = group.wait_for_leader(Duration::from_secs(20)).await?;
    println!("3 coordinators up; leader is node {}", leader.node_id);
    let client = group.client()?;
    client
        .post::<_, serde_json::Value>(
            "/v1/models",
            &NewModel {
                name: "bench".into(),
                arch: idunno_api::arch::Arch::ResNet18,
                weights: "models/bench.safetensors".into(),
                input_size: None,
                cost_ms: None,
                online: Default::default(),
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
    let _ = job;
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
                            results: None,
                            result: Some(format!("results/{}", lease.batch_id)),
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
