//! The client commands: parse flags, call the REST API through [`idunno_api::Client`], print
//! plain tables (or JSON with `--json`).

pub mod cluster;
pub mod coordinator;
pub mod job;
pub mod model;
pub mod sdfs;
pub mod signal;
pub mod table;
pub mod up;
pub mod watch;

use clap::Args;
use idunno_api::Client;

/// Where the coordinators are and how to authenticate; shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Coordinator addresses, tried in order until one answers.
    #[arg(
        long,
        global = true,
        env = "IDUNNO_COORDINATORS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    pub coordinators: Vec<String>,

    /// Bearer token for the API.
    #[arg(long, global = true, env = "IDUNNO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.coordinators, self.token.clone())?)
    }
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
