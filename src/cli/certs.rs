//! `idunno certs DIR`: a throwaway CA and one certificate for every node of a cluster, as
//! `--tls-dir DIR` reads them.

use std::path::PathBuf;

use super::outln;
use clap::Args;

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Folder to write `ca.pem`, `cert.pem` and `key.pem` into (created if missing).
    pub dir: PathBuf,

    /// A host name or IP address the nodes are reached at (repeat, or comma-separate).
    #[arg(long = "host", value_delimiter = ',', default_values = idunno::certs::LOCAL_HOSTS)]
    pub hosts: Vec<String>,

    /// Replace a CA and certificate already in the folder.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let hosts = args.hosts;
    idunno::certs::make(&args.dir, &hosts, args.force)?;
    outln!(
        "wrote {0}/ca.pem, {0}/cert.pem, {0}/key.pem for {1}: start every node with --tls-dir {0}, \
         clients with --tls-ca {0}/ca.pem",
        args.dir.display(),
        hosts.join(", ")
    );
    Ok(())
}
