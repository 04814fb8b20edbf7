//! Raft RPCs between coordinators over HTTP under `/raft/…`, with one shared reqwest client.
//!
//! Append and vote RPCs carry JSON. A snapshot chunk carries its bytes raw after a small JSON
//! header ([`encode_snapshot_chunk`]): as JSON, a byte array is a list of numbers, ~4x larger.
//!
//! A peer that refuses connections is [`Unreachable`] (the leader backs off from it); a call
//! that outlives its deadline is a [`Timeout`]; a body the peer refuses as too large (413), or
//! one over [`Network`]'s append target, is [`PayloadTooLarge`] with an entry count that fits,
//! so openraft sends fewer entries at a time.
//!
//! openraft gives every append one heartbeat interval, however large its entries. An append
//! that carries entries is therefore sent from a task of its own with a deadline that grows
//! with its size: when openraft gives up waiting, the body still reaches the follower, and the
//! retry of the same append waits for that delivery and then only confirms it with an empty
//! append at the last entry instead of sending every byte again. Heartbeats never wait behind
//! such a delivery, so the follower keeps hearing from its leader meanwhile. The server side is
//! [`super::routes`].

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::links::Links;
use super::{LogId, Node, NodeId, TypeConfig, Vote};
use idunno_api::headers::{NODE_HEADER, SECRET_HEADER};
use idunno_api::Scheme;

/// Content type of a snapshot chunk ([`encode_snapshot_chunk`]).
pub const SNAPSHOT_CONTENT_TYPE: &str = "application/x-idunno-snapshot-chunk";

/// Most bytes an append RPC of several entries carries; a single entry goes whatever its size
/// (the proposer keeps entries near its own byte cap, one client request at most).
const APPEND_TARGET_BYTES: usize = 8 << 20;

/// Extra time a call gets per KiB of body, on top of openraft's deadline: ~1 s per MiB, for a
/// loaded machine parsing and storing a large entry.
const PER_KIB: Duration = Duration::from_millis(1);

type AppendResult =
    Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>>;

/// Creates a [`Peer`] per target; shares one connection pool.
#[derive(Clone)]
pub struct Network {
    pub(crate) id: NodeId,
    pub(crate) http: reqwest::Client,
    /// How peers' addresses are reached.
    scheme: Scheme,
    pub(crate) secret: Option<String>,
    /// Bytes above which an append of several entries is split (at most half the peers'
    /// body limit, so a follower configured like us never refuses one).
    append_target: usize,
    /// Cut links, and when each peer last answered an append.
    pub(crate) links: Arc<Links>,
}

impl Network {
    /// `body_limit` is the `/raft/…` body limit the peers are configured with.
    pub fn new(
        id: NodeId,
        http: reqwest::Client,
        scheme: Scheme,
        secret: Option<String>,
        body_limit: usize,
        links: Arc<Links>,
    ) -> Network {
        Network {
            id,
            http,
            scheme,
            secret,
            append_target: APPEND_TARGET_BYTES.min(body_limit / 2).max(1),
            links,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            net: self.clone(),
            target,
            node: node.clone(),
            delivery: None,
        }
    }
}

/// The RPC client to one coordinator.
pub struct Peer {
    net: Network,
    target: NodeId,
    node: Node,
    /// The append with entries being delivered, possibly after openraft stopped waiting.
    delivery: Option<Delivery>,
}

/// An append RPC running in a task of its own.
struct Delivery {
    key: AppendKey,
    task: JoinHandle<AppendResult>,
}

/// What makes two appends the same: the leader's vote and the log range they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AppendKey {
    vote: Vote,
    prev: Option<LogId>,
    last: Option<LogId>,
}

impl AppendKey {
    fn of(rpc: &AppendEntriesRequest<TypeConfig>) -> AppendKey {
        AppendKey {
            vote: rpc.vote,
            prev: rpc.prev_log_id,
            last: rpc.entries.last().map(|e| e.log_id),
        }
    }
}

/// One HTTP call to a peer, independent of the [`Peer`] so that it can run in a task.
#[derive(Clone)]
struct Call {
    http: reqwest::Client,
    links: Arc<Links>,
    secret: Option<String>,
    url: String,
    action: RPCTypes,
    id: NodeId,
    target: NodeId,
    node: Node,
}

impl Call {
    /// Posts `body` and reads the peer's `Result` answer. `ttl` is the whole call's deadline;
    /// `too_large` makes the error for a 413.
    async fn send<Resp, E>(
        self,
        content_type: &'static str,
        body: Vec<u8>,
        ttl: Duration,
        too_large: impl FnOnce(std::io::Error) -> RPCError<NodeId, Node, RaftError<NodeId, E>>,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.links.is_cut(self.target) {
            let e = std::io::Error::other(format!("link to node {} cut", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let mut request = self
            .http
            .post(&self.url)
            .timeout(ttl)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(NODE_HEADER, self.id.to_string())
            .body(body);
        if let Some(secret) = &self.secret {
            request = request.header(SECRET_HEADER, secret);
        }
        let timeout = || {
            RPCError::Timeout(Timeout {
                action: self.action,
                id: self.id,
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
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let e = std::io::Error::other(format!("{}: {status}: {text}", self.url));
            return Err(if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
                too_large(e)
            } else {
                RPCError::Network(NetworkError::new(&e))
            });
        }
        let result: Result<Resp, RaftError<NodeId, E>> = resp.json().await.map_err(|e| {
            if e.is_timeout() {
                timeout()
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        })?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node, e))
        })
    }
}

/// A 413 where openraft cannot send less (votes, snapshot chunks): a plain network error.
fn refused<E: std::error::Error>(e: std::io::Error) -> RPCError<NodeId, Node, E> {
    RPCError::Network(NetworkError::new(&e))
}

impl Peer {
    fn call(&self, route: &str, action: RPCTypes) -> Call {
        Call {
            http: self.net.http.clone(),
            links: self.net.links.clone(),
            secret: self.net.secret.clone(),
            url: format!("{}/raft/{route}", self.net.scheme.base_url(&self.node.addr)),
            action,
            id: self.net.id,
            target: self.target,
            node: self.node.clone(),
        }
    }

    /// Sends an append and waits for its answer; an append with entries runs in a task that
    /// outlives this call if openraft stops waiting (it is then `self.delivery`).
    async fn deliver(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> AppendResult {
        let result = self.deliver_once(rpc, ttl).await;
        if result.is_ok() {
            self.net.links.acked(self.target);
        }
        result
    }

    async fn deliver_once(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> AppendResult {
        let body = encode(rpc)?;
        if body.len() > self.net.append_target && rpc.entries.len() > 1 {
            return Err(PayloadTooLarge::new_entries_hint(fitting_entries(
                rpc,
                self.net.append_target,
            ))
            .into());
        }
        let call = self.call("append", RPCTypes::AppendEntries);
        let n = rpc.entries.len() as u64;
        // The follower's limit is below ours: halve the entries until they fit.
        let too_large = move |e: std::io::Error| {
            PayloadTooLarge::new_entries_hint((n / 2).max(1))
                .with_source_error(&e)
                .into()
        };
        if n == 0 {
            return call.send(JSON, body, ttl, too_large).await;
        }
        let deadline = ttl + PER_KIB * (body.len() / 1024) as u32;
        let task = tokio::spawn(call.send(JSON, body, deadline, too_large));
        let delivery = self.delivery.insert(Delivery {
            key: AppendKey::of(rpc),
            task,
        });
        let result = joined(&mut delivery.task).await;
        self.delivery = None;
        result
    }

    /// Answers a repeat of an append already delivered with `answer`: a refusal stands; an
    /// acceptance is confirmed afresh by an empty append at the last entry it covered, so the
    /// leader learns the follower still holds it as of now, without resending the entries.
    async fn confirm(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        answer: AppendEntriesResponse<NodeId>,
        ttl: Duration,
    ) -> AppendResult {
        let matched = match &answer {
            AppendEntriesResponse::Success => rpc.entries.last().map(|e| e.log_id),
            AppendEntriesResponse::PartialSuccess(m) => *m,
            AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => {
                return Ok(answer)
            }
        };
        tracing::debug!(
            target = self.target,
            ?matched,
            "confirming an append delivered late"
        );
        let probe = AppendEntriesRequest::<TypeConfig> {
            vote: rpc.vote,
            prev_log_id: matched,
            leader_commit: rpc.leader_commit,
            entries: Vec::new(),
        };
        match self.deliver(&probe, ttl).await? {
            AppendEntriesResponse::Success => Ok(answer),
            higher @ AppendEntriesResponse::HigherVote(_) => Ok(higher),
            other => {
                let e = std::io::Error::other(format!(
                    "node {} no longer holds the entries it accepted ({other})",
                    self.target
                ));
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }
}

const JSON: &str = "application/json";

fn encode<T: Serialize, E: std::error::Error>(
    value: &T,
) -> Result<Vec<u8>, RPCError<NodeId, Node, E>> {
    serde_json::to_vec(value).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

/// How many leading entries of `rpc` fit in `target` bytes (at least one).
fn fitting_entries(rpc: &AppendEntriesRequest<TypeConfig>, target: usize) -> u64 {
    let mut total = 0;
    let mut fit = 0;
    for entry in &rpc.entries {
        total += serde_json::to_vec(entry).map_or(0, |b| b.len());
        if total > target {
            break;
        }
        fit += 1;
    }
    fit.max(1)
}

/// Waits for a delivery task; a task that panicked or was cancelled is a network error.
async fn joined(task: &mut JoinHandle<AppendResult>) -> AppendResult {
    match task.await {
        Ok(result) => result,
        Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
    }
}

/// A snapshot chunk as sent: the request's JSON without its data (u32 LE length first), then
/// the data bytes as they are.
pub fn encode_snapshot_chunk(
    rpc: &InstallSnapshotRequest<TypeConfig>,
) -> serde_json::Result<Vec<u8>> {
    let header = serde_json::to_vec(&InstallSnapshotRequest::<TypeConfig> {
        vote: rpc.vote,
        meta: rpc.meta.clone(),
        offset: rpc.offset,
        data: Vec::new(),
        done: rpc.done,
    })?;
    let mut out = Vec::with_capacity(4 + header.len() + rpc.data.len());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&rpc.data);
    Ok(out)
}

/// Reads a chunk [`encode_snapshot_chunk`] made.
pub fn decode_snapshot_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let len = body
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_le_bytes(b) as usize)
        .ok_or("a snapshot chunk starts with its header's length")?;
    let header = body
        .get(4..4 + len)
        .ok_or("the snapshot chunk's header is cut short")?;
    let mut rpc: InstallSnapshotRequest<TypeConfig> =
        serde_json::from_slice(header).map_err(|e| format!("bad snapshot chunk header: {e}"))?;
    rpc.data = body[4 + len..].to_vec();
    Ok(rpc)
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> AppendResult {
        let ttl = option.hard_ttl();
        if !rpc.entries.is_empty() {
            if let Some(delivery) = &mut self.delivery {
                // The previous append is still on its way (openraft stopped waiting for it):
                // wait for it rather than send a second copy of its bytes or overtake it.
                let done = joined(&mut delivery.task).await;
                let same = delivery.key == AppendKey::of(&rpc);
                self.delivery = None;
                match (same, done) {
                    (true, Ok(answer)) => return self.confirm(&rpc, answer, ttl).await,
                    // The follower refused it as too large: openraft must send fewer entries.
                    (true, Err(e @ RPCError::PayloadTooLarge(_))) => return Err(e),
                    // Failed, or a different append: send this one.
                    _ => {}
                }
            }
        }
        self.deliver(&rpc, ttl).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let body =
            encode_snapshot_chunk(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call("snapshot", RPCTypes::InstallSnapshot)
            .send(SNAPSHOT_CONTENT_TYPE, body, option.hard_ttl(), refused)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let body = encode(&rpc)?;
        self.call("vote", RPCTypes::Vote)
            .send(JSON, body, option.hard_ttl(), refused)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_chunk_round_trips_and_a_broken_one_is_refused() {
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: Default::default(),
            offset: 4096,
            data: (0..=255).collect(),
            done: false,
        };
        let body = encode_snapshot_chunk(&rpc).unwrap();
        // Raw bytes, not a JSON list of numbers.
        assert!(body.len() < 256 + 400, "{}", body.len());
        let back = decode_snapshot_chunk(&body).unwrap();
        assert_eq!((back.offset, back.done, back.vote), (4096, false, rpc.vote));
        assert_eq!(back.data, rpc.data);
        assert!(decode_snapshot_chunk(&body[..2]).is_err());
        assert!(decode_snapshot_chunk(&body[..10]).is_err());
        assert!(decode_snapshot_chunk(&[0, 0, 0, 0]).is_err());
    }
}
