//! `idunno job …`: the original system's job verbs over the REST API.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use idunno_api::job::{
    BatchInfo, BatchStateInfo, Distribution, Inputs, Job, JobPatch, JobState, JobStats, NewJob,
};
use idunno_api::result::QueryResult;
use idunno_api::Client;
use indicatif::{ProgressBar, ProgressStyle};

use super::outln;
use super::table::{render, time};
use super::{print_json, Connection};

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    cmd: JobCmd,
}

#[derive(Debug, Subcommand)]
enum JobCmd {
    /// Create a job over SDFS inputs (a list or a prefix).
    Add {
        /// Registry name of the model.
        #[arg(long)]
        model: String,
        /// Every SDFS file under this prefix, in name order.
        #[arg(long, conflicts_with = "inputs")]
        prefix: Option<String>,
        /// SDFS file names.
        #[arg(long, value_delimiter = ',')]
        inputs: Vec<String>,
        #[arg(long, default_value_t = 8)]
        batch_size: u32,
        /// Fair-share weight.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// A label.
        #[arg(long)]
        name: Option<String>,
        /// Start it at once.
        #[arg(long)]
        start: bool,
    },
    /// Start (or resume) a job.
    Start { id: u64 },
    /// Stop a job: nothing new is handed out until it is started again.
    Stop { id: u64 },
    /// Change the batch size of the rest of a job.
    SetBatchSize { id: u64, batch_size: u32 },
    /// Change a job's fair-share weight.
    SetWeight { id: u64, weight: u32 },
    /// Show one job, or all of them.
    Status { id: Option<u64> },
    /// List jobs.
    List,
    /// Show a job's batches.
    Batches { id: u64 },
    /// A job's statistics: rate, per-query latency and compute time (mean, std, p50, p90,
    /// p95, p99), its share of worker time, and the workers serving it.
    Stats { id: u64 },
    /// The workers serving a job now, and every worker that completed part of it.
    Workers { id: u64 },
    /// A live view of jobs (every running job by default) until they end.
    Watch { ids: Vec<u64> },
    /// Delete a job and its batches.
    Delete { id: u64 },
    /// Wait for a job to finish, with a progress bar; then show it.
    Wait { id: u64 },
    /// A job's results so far, one row per input in input order.
    Results {
        id: u64,
        /// Classes shown per input.
        #[arg(long, default_value_t = 3)]
        top: usize,
    },
}

pub async fn run(args: JobArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    match args.cmd {
        JobCmd::Add {
            model,
            prefix,
            inputs,
            batch_size,
            weight,
            name,
            start,
        } => {
            let inputs = match prefix {
                Some(prefix) => Inputs::Prefix { prefix },
                None if inputs.is_empty() => bail!("give --inputs a,b,… or --prefix P"),
                None => Inputs::List(inputs),
            };
            let body = NewJob {
                name,
                model,
                inputs,
                batch_size,
                weight,
                start,
            };
            let job: Job = client.post("/v1/jobs", &body).await?;
            show(&[job], json)
        }
        JobCmd::Start { id } => {
            let job: Job = client.post(&format!("/v1/jobs/{id}/start"), &()).await?;
            show(&[job], json)
        }
        JobCmd::Stop { id } => {
            let job: Job = client.post(&format!("/v1/jobs/{id}/stop"), &()).await?;
            show(&[job], json)
        }
        JobCmd::SetBatchSize { id, batch_size } => {
            let patch = JobPatch {
                batch_size: Some(batch_size),
                weight: None,
            };
            let job: Job = client.patch(&format!("/v1/jobs/{id}"), &patch).await?;
            show(&[job], json)
        }
        JobCmd::SetWeight { id, weight } => {
            let patch = JobPatch {
                batch_size: None,
                weight: Some(weight),
            };
            let job: Job = client.patch(&format!("/v1/jobs/{id}"), &patch).await?;
            show(&[job], json)
        }
        JobCmd::Status { id: Some(id) } => {
            let job: Job = client.get(&format!("/v1/jobs/{id}")).await?;
            if json {
                return print_json(&job);
            }
            outln!("{}", detail(&job));
            Ok(())
        }
        JobCmd::Status { id: None } | JobCmd::List => {
            let jobs: Vec<Job> = client.get("/v1/jobs").await?;
            show(&jobs, json)
        }
        JobCmd::Batches { id } => {
            let batches: Vec<BatchInfo> = client.get(&format!("/v1/jobs/{id}/batches")).await?;
            if json {
                return print_json(&batches);
            }
            let rows: Vec<Vec<String>> = batches.iter().map(batch_row).collect();
            outln!(
                "{}",
                render(
                    &["batch", "start", "len", "pass", "state", "worker", "detail"],
                    &rows
                )
            );
            Ok(())
        }
        JobCmd::Stats { id } => {
            let stats: JobStats = client.get(&format!("/v1/jobs/{id}/stats")).await?;
            if json {
                return print_json(&stats);
            }
            outln!("{}", stats_text(&stats));
            Ok(())
        }
        JobCmd::Workers { id } => {
            let stats: JobStats = client.get(&format!("/v1/jobs/{id}/stats")).await?;
            if json {
                return print_json(&stats.workers);
            }
            outln!("{}", workers_table(&stats));
            Ok(())
        }
        JobCmd::Watch { ids } => super::watch::watch(&client, &ids).await,
        JobCmd::Delete { id } => {
            client.delete(&format!("/v1/jobs/{id}")).await?;
            outln!("deleted job {id}");
            Ok(())
        }
        JobCmd::Wait { id } => {
            let job = wait_with_progress(&client, id).await?;
            if json {
                return print_json(&job);
            }
            outln!("{}", detail(&job));
            Ok(())
        }
        JobCmd::Results { id, top } => {
            let results: Vec<QueryResult> = client.get(&format!("/v1/jobs/{id}/results")).await?;
            if json {
                return print_json(&results);
            }
            outln!("{}", results_table(&results, top));
            Ok(())
        }
    }
}

/// Polls a job until it is done (or stopped), drawing its progress; returns its last state.
pub async fn wait_with_progress(client: &Client, id: u64) -> anyhow::Result<Job> {
    let path = format!("/v1/jobs/{id}");
    let mut job: Job = client.get(&path).await?;
    let bar = ProgressBar::new(job.queries);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} job {prefix} [{bar:40}] {pos}/{len} queries  {msg}  {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    loop {
        bar.set_position(job.done);
        bar.set_message(format!("{} failed, {:.1} q/s", job.failed, job.rate_qps));
        match job.state {
            JobState::Done => break,
            JobState::Stopped | JobState::Created => {
                bar.abandon();
                bail!(
                    "job {id} is {} with {}/{} queries done; start it with `idunno job start {id}`",
                    format!("{:?}", job.state).to_lowercase(),
                    job.done,
                    job.queries
                );
            }
            JobState::Running => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        job = client.get(&path).await?;
    }
    bar.finish_and_clear();
    Ok(job)
}

/// One row per query: input, its top `k` classes with probabilities, or its error.
pub fn results_table(results: &[QueryResult], k: usize) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut row = vec![r.index.to_string(), r.input.clone()];
            match &r.error {
                Some(e) => {
                    row.push(format!("error: {e}"));
                    row.extend(std::iter::repeat_n(String::new(), k.saturating_sub(1)));
                }
                None => {
                    for i in 0..k {
                        row.push(r.top.get(i).map_or(String::new(), |c| {
                            format!("{} {:.3}", c.label, c.probability)
                        }));
                    }
                }
            }
            row
        })
        .collect();
    let mut header = vec!["#".to_string(), "input".to_string()];
    header.extend((1..=k).map(|i| format!("top {i}")));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    render(&header, &rows)
}

fn show(jobs: &[Job], json: bool) -> anyhow::Result<()> {
    if json {
        return if jobs.len() == 1 {
            print_json(&jobs[0])
        } else {
            print_json(&jobs)
        };
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.name.clone(),
                j.model.clone(),
                format!("{:?}", j.state).to_lowercase(),
                format!("{}/{}", j.done, j.queries),
                j.failed.to_string(),
                j.batch_size.to_string(),
                j.weight.to_string(),
                format!("{:.1}", j.rate_qps),
            ]
        })
        .collect();
    outln!(
        "{}",
        render(
            &["id", "name", "model", "state", "done", "failed", "batch", "weight", "q/s"],
            &rows
        )
    );
    Ok(())
}

pub fn detail(j: &Job) -> String {
    let mut lines = vec![
        format!("job {} ({})", j.id, j.name),
        format!("  model        {}", j.model),
        format!("  state        {:?}", j.state).to_lowercase(),
        format!(
            "  queries      {} done of {} ({} failed, {} in flight)",
            j.done, j.queries, j.failed, j.in_flight
        ),
        format!(
            "  batches      {} done, {} retried",
            j.batches_done, j.retries
        ),
        format!("  batch size   {}", j.batch_size),
        format!("  weight       {}", j.weight),
        format!("  rate         {:.2} queries/s (last 10 s)", j.rate_qps),
        format!("  created      {}", time(j.created_at_ms)),
    ];
    if let Some(t) = j.started_at_ms {
        lines.push(format!("  started      {}", time(t)));
    }
    if let Some(t) = j.finished_at_ms {
        lines.push(format!("  finished     {}", time(t)));
        if let Some(s) = j.started_at_ms {
            let secs = t.saturating_sub(s) as f64 / 1000.0;
            lines.push(format!("  wall time    {secs:.2} s"));
        }
    }
    if j.batches_done > 0 {
        lines.push(format!(
            "  compute      {:.1} ms per query",
            j.compute_ms as f64 / j.done.max(1) as f64
        ));
    }
    lines.join("\n")
}

/// `job stats`: the figures, then the two distributions as a table, then the workers.
pub fn stats_text(s: &JobStats) -> String {
    let mut out = vec![
        format!("job {} ({:?})", s.id, s.state).to_lowercase(),
        format!(
            "  queries      {} done of {} ({} failed, {} in flight)",
            s.done, s.queries, s.failed, s.in_flight
        ),
        format!("  rate         {:.2} queries/s (last 10 s)", s.rate_qps),
        format!(
            "  share        {:.1} % of worker time (last 10 s)",
            s.share * 100.0
        ),
    ];
    if s.state == JobState::Running {
        out.push(format!(
            "  fair share   {:.1} % (weight × model cost, {:.1} ms/query)",
            s.fair_share * 100.0,
            s.cost_ms_per_query
        ));
    }
    if let Some(eta) = s.eta_s {
        out.push(format!("  eta          {eta:.0} s"));
    }
    let row = |name: &str, d: &Distribution| {
        let mut r = vec![name.to_string(), d.count.to_string()];
        r.extend(
            [d.mean, d.std, d.p50, d.p90, d.p95, d.p99]
                .iter()
                .map(|v| format!("{v:.1}")),
        );
        r
    };
    out.push(String::new());
    out.push(render(
        &[
            "per query (ms)",
            "n",
            "mean",
            "std",
            "p50",
            "p90",
            "p95",
            "p99",
        ],
        &[
            row("lease to result", &s.latency_ms),
            row("compute", &s.compute_ms),
        ],
    ));
    out.push(String::new());
    out.push(workers_table(s));
    out.join("\n")
}

/// `job workers`: one row per worker (C5).
fn workers_table(s: &JobStats) -> String {
    let rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.name.clone(),
                if w.current { "yes" } else { "no" }.to_string(),
                w.batches_in_flight.to_string(),
                w.queries_done.to_string(),
            ]
        })
        .collect();
    render(
        &[
            "worker",
            "name",
            "serving now",
            "batches in flight",
            "queries done",
        ],
        &rows,
    )
}

fn batch_row(b: &BatchInfo) -> Vec<String> {
    let (state, worker, detail) = match &b.state {
        BatchStateInfo::Pending => ("pending".to_string(), String::new(), String::new()),
        BatchStateInfo::Leased {
            worker,
            lease_id,
            attempt,
            ..
        } => (
            "leased".into(),
            worker.clone(),
            format!("lease {lease_id}, attempt {attempt}"),
        ),
        BatchStateInfo::Done {
            result,
            worker,
            failed,
            compute_ms,
            ..
        } => (
            "done".into(),
            worker.clone(),
            format!("{result} ({failed} failed, {compute_ms} ms)"),
        ),
    };
    vec![
        b.id.clone(),
        b.start.to_string(),
        b.len.to_string(),
        b.pass_size.to_string(),
        state,
        worker,
        detail,
    ]
}
