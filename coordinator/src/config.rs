//! The coordinator's configuration: one struct, from command-line flags or the environment,
//! with defaults that work for a local three-node cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use idunno_server::tls::TlsOptions;

/// `idunno coordinator …`
#[derive(Debug, Clone, Args)]
pub struct CoordinatorConfig {
    /// This coordinator's Raft node id (unique in the cluster, ≥ 1).
    #[arg(long)]
    pub id: u64,

    /// Address to listen on (API and Raft RPCs share it). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub listen: String,

    /// Address other processes reach this node at; defaults to the bound listen address.
    #[arg(long)]
    pub advertise: Option<String>,

    /// Folder for the Raft log, state and snapshots (sled).
    #[arg(long, default_value = "./data/coordinator")]
    pub data: PathBuf,

    /// The initial voters, `ID=HOST:PORT,…` including this node. With every node started with
    /// the same list the cluster initialises itself once; a restarted node just rejoins.
    /// Empty: a one-node cluster of this node alone.
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<(u64, String)>,

    /// Start without initialising anything: wait to be added with `POST /v1/cluster/members`.
    #[arg(long)]
    pub join: bool,

    /// Leader heartbeat interval (ms).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,

    /// Lower end of the election timeout range (ms), as openraft counts it: each node draws
    /// its timeout from [min, max) once, at start. The effective wait is longer: a follower
    /// that has seen a leader first honours that leader's lease (`--election-max-ms`), then
    /// waits its timeout, and openraft checks every 1.5 heartbeat intervals. With the
    /// defaults a follower campaigns 450–750 ms after the last heartbeat it received (one
    /// whose log is behind waits 2 × max longer, so an up-to-date node wins first).
    #[arg(long, default_value_t = 150)]
    pub election_min_ms: u64,
    /// Upper end of the election timeout range (ms); also the leader lease a follower honours
    /// before its own timeout starts (see `--election-min-ms`).
    #[arg(long, default_value_t = 300)]
    pub election_max_ms: u64,

    /// Build a snapshot after this many log entries since the last one.
    #[arg(long, default_value_t = 5000)]
    pub snapshot_every: u64,

    /// Log entries kept after a snapshot (for followers slightly behind).
    #[arg(long, default_value_t = 1000)]
    pub keep_logs: u64,

    /// A worker silent for this long is dead: its leases go back to the queue. Silence is
    /// each coordinator's own record (workers heartbeat every coordinator), so a new leader
    /// expires a dead worker's leases on schedule; a worker it never heard from counts as
    /// silent three heartbeat intervals after the coordinator started.
    #[arg(long, default_value_t = 1500)]
    pub lease_timeout_ms: u64,

    /// Longest a batch may stay leased even to a live worker.
    #[arg(long, default_value_t = 600_000)]
    pub max_batch_ms: u64,

    /// Worker time a lease should be worth: a batch holds as many forward passes of its job's
    /// batch size (up to 16) as its model's measured cost per query says make this much, so a
    /// cheap model at a small batch size shares each lease's fixed cost (two commits, a
    /// results object, the HTTP calls) among more queries. 0: one pass per lease.
    #[arg(long, default_value_t = 100)]
    pub lease_target_ms: u64,

    /// How often workers heartbeat (each coordinator): several times per lease timeout.
    #[arg(long, default_value_t = 300)]
    pub worker_heartbeat_ms: u64,

    /// SDFS replication factor: copies kept of each file (at most the live storage nodes).
    #[arg(long, default_value_t = 3)]
    pub replication: u32,

    /// SDFS versions kept per file name.
    #[arg(long, default_value_t = 5)]
    pub keep_versions: u32,

    /// A storage node silent for this long is dead and its blobs are re-replicated.
    #[arg(long, default_value_t = 600)]
    pub node_timeout_ms: u64,

    /// Largest SDFS file (bytes).
    #[arg(long, default_value_t = 64 << 30)]
    pub max_file_size: u64,

    /// Grace period of SDFS garbage collection: a blob no version uses any more is deleted
    /// this long after it was freed (reads in flight finish), and a blob on a node that no
    /// file uses once it is this old (in-flight puts are younger).
    #[arg(long, default_value_t = 60_000)]
    pub gc_grace_ms: u64,

    /// Longest a storage node may make no progress on a coordinator's call (take a piece of a
    /// put, send a piece of a read, answer) before the coordinator gives up on it: a put goes
    /// on with the other replicas, a read resumes on the next one, repair moves on.
    #[arg(long, default_value_t = 10_000)]
    pub storage_timeout_ms: u64,

    /// Largest JSON request body on the client API (bytes).
    #[arg(long, default_value_t = 16 << 20)]
    pub body_limit: usize,

    /// Largest body of a Raft RPC between coordinators (`/raft/…`; bytes). Independent of
    /// `--body-limit`, and at least twice it: one log entry may hold a whole client request.
    /// Every coordinator of a group should use the same value.
    #[arg(long, default_value_t = 256 << 20)]
    pub raft_body_limit: usize,

    /// Online inference (`/v2`): images per batch at most, for models that set none.
    #[arg(long, default_value_t = 8)]
    pub online_max_batch: u32,

    /// Online inference: how long a request may wait for others to fill its batch (ms), for
    /// models that set none. 0 = never wait (no dynamic batching beyond what is queued).
    #[arg(long, default_value_t = 5)]
    pub online_max_delay_ms: u32,

    /// Online inference's weight in the fair-time scheduler, against each job's weight:
    /// online requests together get this many shares of the query rate.
    #[arg(long, default_value_t = 1)]
    pub online_weight: u32,

    /// Longest an online request may take (ms) unless it asks for less (`timeout`).
    #[arg(long, default_value_t = 30_000)]
    pub online_timeout_ms: u64,

    /// Bearer token required on the client API (`/v1/…` and `/v2…` but its health probes).
    /// Without one the API is open, which a node listening beyond 127.0.0.1 refuses unless
    /// given `--open`.
    #[arg(long, env = "IDUNNO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Serve the client API without a token even on an address beyond 127.0.0.1.
    #[arg(long)]
    pub open: bool,

    /// Shared secret required on internal routes (`/raft/…`, storage nodes); none = open.
    #[arg(long, env = "IDUNNO_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    #[command(flatten)]
    pub tls: TlsOptions,
}

impl CoordinatorConfig {
    /// A configuration with every default, for embedding and tests.
    pub fn new(id: u64, data: PathBuf) -> CoordinatorConfig {
        CoordinatorConfig {
            id,
            listen: "127.0.0.1:0".into(),
            advertise: None,
            data,
            peers: Vec::new(),
            join: false,
            heartbeat_ms: 100,
            election_min_ms: 150,
            election_max_ms: 300,
            snapshot_every: 5000,
            keep_logs: 1000,
            lease_timeout_ms: 1500,
            max_batch_ms: 600_000,
            lease_target_ms: 100,
            worker_heartbeat_ms: 300,
            replication: 3,
            keep_versions: 5,
            node_timeout_ms: 600,
            max_file_size: 64 << 30,
            gc_grace_ms: 60_000,
            storage_timeout_ms: 10_000,
            body_limit: 16 << 20,
            raft_body_limit: 256 << 20,
            online_max_batch: 8,
            online_max_delay_ms: 5,
            online_weight: 1,
            online_timeout_ms: 30_000,
            token: None,
            open: false,
            cluster_secret: None,
            tls: TlsOptions::default(),
        }
    }

    pub fn storage_timeout(&self) -> Duration {
        Duration::from_millis(self.storage_timeout_ms.max(1))
    }

    pub fn lease_timeout(&self) -> Duration {
        Duration::from_millis(self.lease_timeout_ms)
    }

    /// The initial voters by id.
    pub fn peer_map(&self) -> BTreeMap<u64, String> {
        self.peers.iter().cloned().collect()
    }

    /// Checks the values before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id must be at least 1".into());
        }
        if self.election_min_ms <= self.heartbeat_ms || self.election_max_ms <= self.election_min_ms
        {
            return Err("need heartbeat-ms < election-min-ms < election-max-ms".into());
        }
        if self.raft_body_limit / 2 < self.body_limit {
            return Err(format!(
                "--raft-body-limit ({}) must be at least twice --body-limit ({}): a log entry \
                 may hold a whole client request",
                self.raft_body_limit, self.body_limit
            ));
        }
        if !(1..=idunno_api::model::MAX_ONLINE_BATCH).contains(&self.online_max_batch) {
            return Err(format!(
                "--online-max-batch must be in 1..={}",
                idunno_api::model::MAX_ONLINE_BATCH
            ));
        }
        if self.online_max_delay_ms > idunno_api::model::MAX_ONLINE_DELAY_MS {
            return Err(format!(
                "--online-max-delay-ms must be at most {}",
                idunno_api::model::MAX_ONLINE_DELAY_MS
            ));
        }
        if self.online_weight == 0 || self.online_timeout_ms == 0 {
            return Err("--online-weight and --online-timeout-ms must be at least 1".into());
        }
        let peers = self.peer_map();
        if peers.len() != self.peers.len() {
            return Err("--peers lists a node id twice".into());
        }
        if !peers.is_empty() && !peers.contains_key(&self.id) && !self.join {
            return Err(format!(
                "--peers does not list this node's id {} (use --join to be added later)",
                self.id
            ));
        }
        Ok(())
    }
}

/// Parses `ID=HOST:PORT`.
pub fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("{id:?} is not a node id"))?;
    let addr = addr.trim();
    if addr.is_empty() || !addr.contains(':') {
        return Err(format!("{addr:?} is not HOST:PORT"));
    }
    Ok((id, addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        assert_eq!(
            parse_peer("2=127.0.0.1:7002").unwrap(),
            (2, "127.0.0.1:7002".into())
        );
        assert!(parse_peer("x=1:2").is_err());
        assert!(parse_peer("2").is_err());
        assert!(parse_peer("2=host").is_err());
    }

    #[test]
    fn a_node_missing_from_its_peer_list_is_refused() {
        let mut c = CoordinatorConfig::new(4, "d".into());
        c.peers = vec![(1, "a:1".into()), (2, "b:2".into())];
        assert!(c.validate().is_err());
        c.join = true;
        assert!(c.validate().is_ok());
    }
}
