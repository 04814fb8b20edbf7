//! `idunno bench …`: measurements of the real system (separate processes on loopback, durable
//! storage). Benchmarks print figures; they assert nothing.

mod failover;
mod fairness;
mod online;
mod raft;
mod sdfs;
mod worker;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Coordinator group: lease+complete commit throughput.
    Raft(raft::RaftBench),
    /// Failures: leader and worker SIGKILLs during a job, timed to a committed write, to the
    /// job's rate back, to a dead worker's batches leased again; a leader killed every 2 s.
    Failover(failover::FailoverBench),
    /// SDFS: put/get throughput of a large file (R=3), and repair time after a storage node's
    /// SIGKILL, split into detection and copy.
    Sdfs(sdfs::SdfsBench),
    /// Workers: images/s per model and batch size standalone, and through the cluster.
    Worker(worker::WorkerBench),
    /// Fair-time scheduling: a cheap job running, a costly one submitted; shares of worker
    /// time, time to the new job's first lease and result, rate gaps per 10 s window.
    Fairness(fairness::FairnessBench),
    /// Online inference over /v2: requests/s and p50/p99 latency at 1, 4 and 16 clients,
    /// with and without dynamic batching, and beside a batch job.
    Online(online::OnlineBench),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.cmd {
        BenchCmd::Raft(b) => raft::run(b).await,
        BenchCmd::Sdfs(b) => sdfs::run(b).await,
        BenchCmd::Worker(b) => worker::run(b).await,
        BenchCmd::Fairness(b) => fairness::run(b).await,
        BenchCmd::Failover(b) => failover::run(b).await,
        BenchCmd::Online(b) => online::run(b).await,
    }
}

/// Mean, median and maximum of a sample.
pub fn summary(samples: &[f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    let mid = sorted.len() / 2;
    let p50 = if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    (mean, p50, sorted[sorted.len() - 1])
}
