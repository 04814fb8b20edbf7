//! A storage node's configuration: one struct, from command-line flags or the environment,
//! with defaults that work for a local cluster on one machine.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use idunno_server::tls::TlsOptions;

use crate::blob_store::StoreOptions;

/// `idunno sdfs-node …`
#[derive(Debug, Clone, Args)]
pub struct NodeConfig {
    /// This node's id in the namespace (`[A-Za-z0-9_-]`, 1–64 characters), e.g. `s1`. The
    /// coordinators place replicas on ids, so a node restarted on the same data folder must
    /// keep its id.
    #[arg(long, value_parser = parse_node_id)]
    pub id: String,

    /// Address to serve blobs on. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7101")]
    pub listen: String,

    /// Address coordinators and other nodes reach this node at (registered with the
    /// coordinators); defaults to the bound listen address.
    #[arg(long)]
    pub advertise: Option<String>,

    /// Folder for the blob database (sled, in `<data>/blobs`).
    #[arg(long, default_value = "./data/s1")]
    pub data: PathBuf,

    /// The coordinators to register and heartbeat with, `HOST:PORT,…`. Empty: serve blobs
    /// without registering (a node for tests or for a coordinator that adds it by hand).
    #[arg(long, env = "IDUNNO_COORDINATORS", value_delimiter = ',')]
    pub coordinators: Vec<String>,

    /// How often to heartbeat (ms); also how often lost blobs are reported.
    #[arg(long, default_value_t = 200)]
    pub heartbeat_ms: u64,

    /// Bearer token for the coordinators' client API (`/v1/…`); none = open.
    #[arg(long, env = "IDUNNO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Shared secret required on this node's `/internal/…` routes and sent to other nodes
    /// when fetching from them; none = open.
    #[arg(long, env = "IDUNNO_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// sled's page cache (MiB) for blob records and chunk checksums. Content is read from
    /// files through the OS page cache, not through this.
    #[arg(long, default_value_t = 16)]
    pub cache_mb: u64,

    /// Content bytes per chunk (KiB) for new blobs: the unit each read verifies. Blobs keep
    /// the chunk size they were stored with.
    #[arg(long, default_value_t = (crate::chunk::CHUNK_SIZE >> 10) as u64)]
    pub chunk_kb: u64,

    #[command(flatten)]
    pub tls: TlsOptions,
}

impl NodeConfig {
    /// A configuration with every default, listening on a free port, for embedding and tests.
    pub fn new(id: impl Into<String>, data: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            id: id.into(),
            listen: "127.0.0.1:0".into(),
            advertise: None,
            data: data.into(),
            coordinators: Vec::new(),
            heartbeat_ms: 200,
            token: None,
            cluster_secret: None,
            cache_mb: 16,
            chunk_kb: (crate::chunk::CHUNK_SIZE >> 10) as u64,
            tls: TlsOptions::default(),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// The store's tuning.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            cache_bytes: self.cache_mb << 20,
            chunk_size: (self.chunk_kb << 10) as usize,
        }
    }

    /// The coordinator addresses, blanks dropped.
    pub fn coordinator_list(&self) -> Vec<String> {
        self.coordinators
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    }

    /// Checks the values before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        parse_node_id(&self.id)?;
        if self.heartbeat_ms == 0 {
            return Err("--heartbeat-ms must be at least 1".into());
        }
        if self.cache_mb == 0 {
            return Err("--cache-mb must be at least 1".into());
        }
        if self.chunk_kb == 0 || self.chunk_kb > 16 << 10 {
            return Err("--chunk-kb must be 1..=16384".into());
        }
        if let Some(a) = &self.advertise {
            if a.trim().is_empty() || !a.contains(':') {
                return Err(format!("--advertise {a:?} is not HOST:PORT"));
            }
        }
        Ok(())
    }
}

/// Checks a node id: `[A-Za-z0-9_-]{1,64}`.
pub fn parse_node_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a node id (1–64 of A-Z a-z 0-9 _ -)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(parse_node_id("s1").is_ok());
        assert!(parse_node_id("node_2-b").is_ok());
        for bad in ["", "a b", "s/1", "é", &"x".repeat(65)] {
            assert!(parse_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_parse_with_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeConfig,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "x",
            "--id",
            "s2",
            "--coordinators",
            "127.0.0.1:7001,127.0.0.1:7002",
        ])
        .unwrap();
        assert_eq!(cli.node.id, "s2");
        assert_eq!(cli.node.listen, "127.0.0.1:7101");
        assert_eq!(cli.node.heartbeat_ms, 200);
        assert_eq!(cli.node.coordinator_list().len(), 2);
        assert!(cli.node.validate().is_ok());
        assert!(<Cli as clap::Parser>::try_parse_from(["x", "--id", "bad id"]).is_err());
    }
}
