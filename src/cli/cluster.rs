//! `idunno cluster …`: the coordinator group's status and membership.

use clap::{Args, Subcommand};
use idunno_api::cluster::{ClusterStatus, NewMember};

use super::outln;
use super::table::render;
use super::{print_json, Connection};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    conn: Connection,
    /// The cluster secret: membership changes need it (or the token) when one is set.
    #[arg(
        long,
        global = true,
        env = "IDUNNO_CLUSTER_SECRET",
        hide_env_values = true
    )]
    cluster_secret: Option<String>,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Who leads, the members, their replication lag.
    Status,
    /// Add a coordinator (started with --join) as a voter.
    AddMember {
        id: u64,
        addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a coordinator from the group.
    RemoveMember { id: u64 },
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?.with_secret(args.cluster_secret);
    let status: ClusterStatus = match args.cmd {
        ClusterCmd::Status => client.get("/v1/cluster").await?,
        ClusterCmd::AddMember { id, addr, learner } => {
            let body = NewMember {
                id,
                addr,
                voter: !learner,
            };
            client.post("/v1/cluster/members", &body).await?
        }
        ClusterCmd::RemoveMember { id } => client
            .call::<()>(
                reqwest::Method::DELETE,
                &format!("/v1/cluster/members/{id}"),
                None,
                None,
            )
            .await
            .map(|(_, body)| serde_json::from_slice(&body))??,
    };
    if args.conn.json {
        return print_json(&status);
    }
    print(&status);
    Ok(())
}

fn print(s: &ClusterStatus) {
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    outln!(
        "node {} ({}) is {}; leader: {}; term {}",
        s.node_id,
        s.addr,
        s.role,
        s.leader_id
            .map(|l| format!("{l} at {}", s.leader_addr.clone().unwrap_or_default()))
            .unwrap_or_else(|| "none".into()),
        s.term
    );
    outln!(
        "log: last {}, committed {}, applied {}, snapshot {}, purged {}",
        opt(s.last_log_index),
        opt(s.commit_index),
        opt(s.applied_index),
        opt(s.snapshot_index),
        opt(s.purged_index)
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                if m.voter { "voter" } else { "learner" }.into(),
                opt(m.matched_index),
                opt(m.lag),
            ]
        })
        .collect();
    outln!(
        "{}",
        render(&["id", "addr", "role", "matched", "lag"], &rows)
    );
}
