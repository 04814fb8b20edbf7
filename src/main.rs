//! `idunno`: the one binary of the IDunno inference cluster. Each role is a subcommand
//! (`coordinator`, …); the client commands (`job`, `model`, `cluster`) talk to any coordinator
//! over HTTP; `bench` measures the system.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A distributed, fault-tolerant inference cluster.
#[derive(Debug, Parser)]
#[command(name = "idunno", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a coordinator (one Raft voter of the control plane).
    Coordinator(idunno_coordinator::CoordinatorConfig),
    /// Run an SDFS storage node.
    SdfsNode(idunno_sdfs::NodeConfig),
    /// Run an inference worker.
    Worker(idunno_worker::WorkerConfig),
    /// Inference jobs: add, start, stop, set-batch-size, status, list.
    Job(cli::job::JobArgs),
    /// The model registry: add, list, show, delete.
    Model(cli::model::ModelArgs),
    /// The coordinator group: status, add or remove a member.
    Cluster(cli::cluster::ClusterArgs),
    /// The replicated file system: put, get, delete, ls, store, get-versions, list, put-dir.
    Sdfs(cli::sdfs::SdfsArgs),
    /// The demo: a whole cluster in this process runs a real inference job on the sample
    /// photos and prints what it saw (`--serve` keeps it running).
    Up(cli::up::UpArgs),
    /// Measure the system (not a test: prints figures).
    Bench(bench::BenchArgs),
    /// Make a throwaway CA and a node certificate for a TLS cluster (`--tls-dir`).
    Certs(cli::certs::CertsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(
        cli.command,
        Command::Coordinator(_) | Command::SdfsNode(_) | Command::Worker(_)
    );
    init_tracing(if server { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Coordinator(config) => cli::coordinator::run(config).await,
            Command::SdfsNode(config) => {
                Ok(idunno_sdfs::run(config, cli::signal::shutdown_signal()).await?)
            }
            Command::Worker(config) => {
                Ok(idunno_worker::run(config, cli::signal::shutdown_signal()).await?)
            }
            Command::Job(args) => cli::job::run(args).await,
            Command::Model(args) => cli::model::run(args).await,
            Command::Cluster(args) => cli::cluster::run(args).await,
            Command::Sdfs(args) => cli::sdfs::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Up(args) => cli::up::run(args).await,
            Command::Certs(args) => cli::certs::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDUNNO_LOG").unwrap_or_else(|_| {
        // The platform verifier logs every certificate it refuses at ERROR; the
        // refusal reaches the user as the command's error anyway.
        tracing_subscriber::EnvFilter::new(format!(
            "{default},openraft=warn,sled=warn,rustls_platform_verifier=off"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
