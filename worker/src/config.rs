//! The worker's configuration: one struct, from command-line flags or the environment, with
//! defaults that work on one machine. It holds no cluster state: a worker learns its id and
//! its timings from the coordinator when it registers.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use idunno_server::tls::TlsOptions;

use crate::error::WorkerError;

/// Longest long-poll the coordinators accept for a lease (`LeaseRequest::wait_ms`).
pub const MAX_BATCH_WAIT_MS: u64 = 30_000;

/// `idunno worker …`
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// Coordinator addresses, `host:port,…`: all of them, so the worker can move on to another
    /// when one dies or while the cluster elects a leader.
    #[arg(
        long,
        env = "IDUNNO_COORDINATORS",
        value_delimiter = ',',
        required = true
    )]
    pub coordinators: Vec<String>,

    /// Which models this worker runs: `all` (any registered model, loaded on first use) or a
    /// comma list of registry names, loaded at start-up. The scheduler only hands this worker
    /// batches of these models.
    #[arg(long, default_value = "all")]
    pub models: ModelSelection,

    /// A human label shown in `idunno worker list`; ids are assigned by the coordinator.
    /// Default: `<host name>-<process id>`.
    #[arg(long)]
    pub name: Option<String>,

    /// Batches computed at the same time whatever their size (they share the compute
    /// threads). More run while the running ones hold fewer images than there are compute
    /// threads: two batches of one on two threads, where one leaves a thread idle.
    #[arg(long, default_value_t = 1)]
    pub capacity: u32,

    /// Local folder for downloaded weights (`<blake3>.safetensors`); reused across restarts,
    /// but nothing in it is needed: delete it at will.
    #[arg(long, default_value = "./data/worker-cache")]
    pub cache: PathBuf,

    /// How long one lease call waits on the coordinator for a batch (ms, at most 30000).
    #[arg(long, default_value_t = 10_000)]
    pub batch_wait_ms: u64,

    /// Bearer token for the coordinators' `/v1` API; none = an open cluster.
    #[arg(long, env = "IDUNNO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Shared secret the storage nodes require on `/internal/…`; none = an open cluster.
    #[arg(long, env = "IDUNNO_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Classes reported per query, most probable first.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,

    /// Threads of the worker's compute pool (preprocessing, convolutions and matrix
    /// products). Default: the number of cores.
    #[arg(long)]
    pub threads: Option<usize>,

    /// Address of the worker's own HTTP listener: `/healthz`, `/readyz`, `/metrics`
    /// (Prometheus). Port 0 picks a free one, which the worker logs at start.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,

    #[command(flatten)]
    pub tls: TlsOptions,
}

impl WorkerConfig {
    /// A configuration with every default, for embedding and tests.
    pub fn new(coordinators: Vec<String>, cache: PathBuf) -> WorkerConfig {
        WorkerConfig {
            coordinators,
            models: ModelSelection::All,
            name: None,
            capacity: 1,
            cache,
            batch_wait_ms: 10_000,
            token: None,
            cluster_secret: None,
            top_k: 5,
            threads: None,
            listen: "127.0.0.1:0".into(),
            tls: TlsOptions::default(),
        }
    }

    /// Checks the values before anything starts.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let bad = |m: String| Err(WorkerError::Config(m));
        if self.coordinators.iter().all(|c| c.trim().is_empty()) {
            return bad(
                "no coordinator address given (--coordinators or IDUNNO_COORDINATORS)".into(),
            );
        }
        if self.capacity == 0 {
            return bad("--capacity must be at least 1".into());
        }
        if self.batch_wait_ms > MAX_BATCH_WAIT_MS {
            return bad(format!(
                "--batch-wait-ms is at most {MAX_BATCH_WAIT_MS}, not {}",
                self.batch_wait_ms
            ));
        }
        if self.top_k == 0 || self.top_k > idunno_models::NUM_CLASSES {
            return bad(format!(
                "--top-k must be in 1..={}, not {}",
                idunno_models::NUM_CLASSES,
                self.top_k
            ));
        }
        if self.threads == Some(0) {
            return bad("--threads must be at least 1".into());
        }
        if let ModelSelection::Only(names) = &self.models {
            if names.is_empty() {
                return bad("--models needs `all` or at least one model name".into());
            }
        }
        Ok(())
    }

    /// Threads of the compute pool: `--threads`, or the number of cores.
    pub fn compute_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// The name sent at registration: `--name`, or `<host name>-<process id>`.
    pub fn display_name(&self) -> String {
        if let Some(name) = self.name.as_ref().filter(|n| !n.trim().is_empty()) {
            return name.trim().to_string();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".to_string());
        format!("{host}-{}", std::process::id())
    }
}

/// The models a worker runs (`--models`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSelection {
    /// Any registered model, loaded when a batch (or `POST /v1/models/{name}/load`) asks.
    All,
    /// Only these registry names, loaded at start-up.
    Only(Vec<String>),
}

impl ModelSelection {
    /// The registration's `accepts` field: `None` = any model.
    pub fn accepts(&self) -> Option<Vec<String>> {
        match self {
            ModelSelection::All => None,
            ModelSelection::Only(names) => Some(names.clone()),
        }
    }

    /// Whether this worker runs `model`.
    pub fn allows(&self, model: &str) -> bool {
        match self {
            ModelSelection::All => true,
            ModelSelection::Only(names) => names.iter().any(|n| n == model),
        }
    }
}

impl FromStr for ModelSelection {
    type Err = String;

    /// `all`, or `name,name,…` (blanks and duplicates dropped).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("all") {
            return Ok(ModelSelection::All);
        }
        let mut names: Vec<String> = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        if names.is_empty() {
            return Err("expected `all` or a comma list of model names".into());
        }
        Ok(ModelSelection::Only(names))
    }
}

impl fmt::Display for ModelSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSelection::All => f.write_str("all"),
            ModelSelection::Only(names) => f.write_str(&names.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerConfig,
    }

    #[test]
    fn flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["w", "--coordinators", "a:1,b:2"]).unwrap();
        let c = cli.worker;
        assert_eq!(c.coordinators, vec!["a:1", "b:2"]);
        assert_eq!(c.models, ModelSelection::All);
        assert_eq!(c.models.accepts(), None);
        assert_eq!(c.capacity, 1);
        assert_eq!(c.batch_wait_ms, 10_000);
        assert_eq!(c.top_k, 5);
        assert_eq!(c.cache, PathBuf::from("./data/worker-cache"));
        assert!(c.validate().is_ok());
        assert!(c.compute_threads() >= 1);
    }

    #[test]
    fn a_model_list_becomes_accepts() {
        let cli = Cli::try_parse_from(["w", "--coordinators", "a:1", "--models", "r18, lite0,r18"])
            .unwrap();
        let m = cli.worker.models;
        assert_eq!(m.accepts(), Some(vec!["r18".into(), "lite0".into()]));
        assert!(m.allows("lite0") && !m.allows("r50"));
        assert_eq!(m.to_string(), "r18,lite0");
        assert!(" , ".parse::<ModelSelection>().is_err());
        assert_eq!(
            "ALL".parse::<ModelSelection>().unwrap(),
            ModelSelection::All
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let base = WorkerConfig::new(vec!["a:1".into()], "c".into());
        for change in [
            (|c: &mut WorkerConfig| c.capacity = 0) as fn(&mut WorkerConfig),
            |c| c.batch_wait_ms = 30_001,
            |c| c.top_k = 0,
            |c| c.top_k = 1001,
            |c| c.threads = Some(0),
            |c| c.coordinators = vec![" ".into()],
        ] {
            let mut c = base.clone();
            change(&mut c);
            assert!(matches!(c.validate(), Err(WorkerError::Config(_))), "{c:?}");
        }
    }

    #[test]
    fn the_display_name_defaults_to_host_and_pid() {
        let mut c = WorkerConfig::new(vec!["a:1".into()], "c".into());
        assert!(c
            .display_name()
            .ends_with(&format!("-{}", std::process::id())));
        c.name = Some(" gpu-box ".into());
        assert_eq!(c.display_name(), "gpu-box");
    }
}
