//! Raft RPCs between coordinators over HTTP (JSON bodies under `/raft/…`), with one shared
//! reqwest client and openraft's per-call deadlines.
//!
//! A peer that refuses connections is [`Unreachable`] (the leader backs off from it); a call
//! that outlives its deadline is a [`Timeout`]. The server side is [`super::routes`].

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Node, NodeId, TypeConfig};
use crate::auth::SECRET_HEADER;

/// Creates a [`Peer`] per target; shares one connection pool.
#[derive(Clone)]
pub struct Network {
    pub(crate) id: NodeId,
    pub(crate) http: reqwest::Client,
    pub(crate) secret: Option<String>,
}

impl Network {
    pub fn new(id: NodeId, http: reqwest::Client, secret: Option<String>) -> Network {
        Network { id, http, secret }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            net: self.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// The RPC client to one coordinator.
pub struct Peer {
    net: Network,
    target: NodeId,
    node: Node,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        route: &str,
        action: RPCTypes,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!(
            "{}/raft/{route}",
            idunno_api::client::base_url(&self.node.addr)
        );
        let mut request = self.net.http.post(&url).timeout(ttl).json(req);
        if let Some(secret) = &self.net.secret {
            request = request.header(SECRET_HEADER, secret);
        }
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.net.id,
                target: self.target,
                timeout: ttl,
            })
        };
        let resp = request.send().await.map_err(|e| {
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&e))
            } else if e.is_timeout() {
                timeout()
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let e = std::io::Error::other(format!("{url}: {status}: {text}"));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let result: Result<Resp, RaftError<NodeId, E>> = resp.json().await.map_err(|e| {
            if e.is_timeout() {
                timeout()
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("append", RPCTypes::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            "snapshot",
            RPCTypes::InstallSnapshot,
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call("vote", RPCTypes::Vote, &rpc, option.hard_ttl())
            .await
    }
}
