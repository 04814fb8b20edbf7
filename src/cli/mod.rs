//! The client commands: parse flags, call the REST API through [`idunno_api::Client`], print
//! plain tables (or JSON with `--json`).

pub mod certs;
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
use idunno_api::{Client, Transport};

/// Where the coordinators are and how to authenticate; shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Coordinator addresses (`host:port`, `http://…` or `https://…`), tried in order until
    /// one answers.
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

    /// The cluster's CA certificate (PEM): reach the coordinators over TLS trusting it
    /// (bare `host:port` addresses become `https://`). Without it, `https://` addresses are
    /// checked against the system's roots.
    #[arg(long, global = true, env = "IDUNNO_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Connection {
    pub fn client(&self) -> anyhow::Result<Client> {
        let transport = match &self.tls_ca {
            Some(ca) => Transport::tls_trusting_file(ca)?,
            None => Transport::plain(),
        };
        Ok(Client::with_transport(
            &self.coordinators,
            self.token.clone(),
            &transport,
        )?)
    }
}

/// Prints a value as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Writes a command's output line. A reader that went away (`idunno job list | head`) ends
/// the command quietly, as other command-line tools do. (The process ignores SIGPIPE, as
/// Rust programs do: a peer that closes a TLS connection mid-write must fail a request, not
/// kill the command, and the signal cannot tell a socket from stdout.)
pub fn write_line(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for command output, through [`write_line`].
macro_rules! outln {
    () => { $crate::cli::write_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::cli::write_line(format_args!($($arg)*)) };
}
pub(crate) use outln;
