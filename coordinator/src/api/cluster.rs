//! `/v1/cluster`: who leads, the members and their replication lag (the leader's view, which
//! a follower asks the leader for); adding and removing coordinators at run time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use idunno_api::cluster::{ClusterStatus, Member, NewMember};
use openraft::{BasicNode, ChangeMembers, ServerState};

use crate::app::Coordinator;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::forward::FORWARDED_HEADER;

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/v1/cluster", get(status))
        .route("/v1/cluster/members", axum::routing::post(add_member))
        .route("/v1/cluster/members/{id}", delete(remove_member))
}

/// This node's status. Replication progress is known to the leader only: a follower asks the
/// leader for it (once: the leader answers from its own view) and keeps `null` if it cannot.
async fn status(State(c): State<Arc<Coordinator>>, headers: HeaderMap) -> Json<ClusterStatus> {
    let mut status = local_status(&c);
    let from_leader = status.role == "leader" || headers.contains_key(FORWARDED_HEADER);
    if let (false, Some(leader)) = (from_leader, status.leader_addr.clone()) {
        match leader_view(&c, &leader).await {
            Ok(view) => {
                for member in &mut status.members {
                    if let Some(seen) = view.members.iter().find(|m| m.id == member.id) {
                        member.matched_index = seen.matched_index;
                        member.lag = seen.lag;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "no replication progress from the leader"),
        }
    }
    Json(status)
}

/// The leader's own `GET /v1/cluster`, within an election timeout.
async fn leader_view(c: &Coordinator, leader: &str) -> Result<ClusterStatus, reqwest::Error> {
    let url = format!("{}/v1/cluster", c.scheme.base_url(leader));
    let mut req = c
        .http
        .get(url)
        .header(FORWARDED_HEADER, "1")
        .timeout(Duration::from_millis(c.config.election_max_ms));
    if let Some(token) = &c.config.token {
        req = req.bearer_auth(token);
    }
    req.send().await?.error_for_status()?.json().await
}

/// This node's own view.
fn local_status(c: &Coordinator) -> ClusterStatus {
    let m = c.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let replication = m.replication.clone().unwrap_or_default();
    let last = m.last_log_index;
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let matched = if *id == c.id && m.state == ServerState::Leader {
                last
            } else {
                replication.get(id).and_then(|l| l.map(|l| l.index))
            };
            let lag = if m.state == ServerState::Leader {
                Some(last.unwrap_or(0).saturating_sub(matched.unwrap_or(0)))
            } else {
                None
            };
            Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: matched,
                lag,
            }
        })
        .collect();
    let leader_addr = m
        .current_leader
        .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
    ClusterStatus {
        node_id: c.id,
        addr: c.addr.clone(),
        // A leader cut off from its quorum acts as none: say so.
        role: if c.isolated() {
            "isolated".to_string()
        } else {
            format!("{:?}", m.state).to_lowercase()
        },
        leader_id: m.current_leader,
        leader_addr,
        term: m.current_term,
        last_log_index: last,
        commit_index: c.log.committed_index(),
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        members,
    }
}

/// How long a new member gets to catch up with the log before it is given up on.
const CATCH_UP: Duration = Duration::from_secs(60);

/// How long the new member's address gets to answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Adds a coordinator, never leaving the group unable to form a quorum: the address must parse
/// and be nobody's yet, a coordinator started with `--join --id ID` must answer there, it
/// joins as a learner and catches up with the log, and only then becomes a voter (unless asked
/// not to). Anything that fails on the way leaves the membership as it was.
async fn add_member(
    State(c): State<Arc<Coordinator>>,
    ApiJson(body): ApiJson<NewMember>,
) -> Result<(StatusCode, Json<ClusterStatus>), ApiError> {
    if body.id == 0 {
        return Err(ApiError::BadRequest("a node id is at least 1".into()));
    }
    let addr = idunno_api::address::parse_host_port(&body.addr).map_err(ApiError::BadRequest)?;
    if let Some((id, at)) = c
        .members()
        .into_iter()
        .find(|(id, at)| *id == body.id || same_addr(at, &addr))
    {
        return Err(ApiError::Conflict(format!(
            "node {id} at {at} is a member already; a new member needs an id and an address of \
             its own"
        )));
    }
    probe(&c, body.id, &addr).await?;
    let node = BasicNode { addr: addr.clone() };
    c.raft
        .add_learner(body.id, node, false)
        .await
        .map_err(|e| ApiError::Conflict(format!("cannot add node {}: {e}", body.id)))?;
    if let Err(e) = wait_caught_up(&c, body.id).await {
        // Leave nothing behind: a learner that cannot follow is removed again.
        let _ = c
            .raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([body.id])), false)
            .await;
        return Err(e);
    }
    if body.voter {
        c.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([body.id])), true)
            .await
            .map_err(|e| {
                ApiError::Conflict(format!("cannot make node {} a voter: {e}", body.id))
            })?;
    }
    tracing::info!(node = body.id, %addr, voter = body.voter, "member added");
    Ok((StatusCode::CREATED, Json(local_status(&c))))
}

/// Two `host:port` addresses that name the same listener (`localhost` is 127.0.0.1).
fn same_addr(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .to_ascii_lowercase()
            .replace("localhost:", "127.0.0.1:")
    };
    norm(a) == norm(b)
}

/// Asks `addr` for its status: it must be an IDunno coordinator with node id `id`.
async fn probe(c: &Coordinator, id: u64, addr: &str) -> Result<(), ApiError> {
    let url = format!("{}/v1/cluster", c.scheme.base_url(addr));
    let mut req = c
        .http
        .get(&url)
        .header(FORWARDED_HEADER, "1")
        .timeout(PROBE_TIMEOUT);
    if let Some(token) = &c.config.token {
        req = req.bearer_auth(token);
    }
    if let Some(secret) = &c.config.cluster_secret {
        req = req.header(idunno_api::headers::SECRET_HEADER, secret);
    }
    let answer = async {
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("it answered {status}"));
        }
        resp.json::<ClusterStatus>()
            .await
            .map_err(|e| format!("it is not an IDunno coordinator ({e})"))
    };
    match answer.await {
        Ok(status) if status.node_id == id => Ok(()),
        Ok(status) => Err(ApiError::Conflict(format!(
            "the coordinator at {addr} is node {}, not {id}",
            status.node_id
        ))),
        Err(e) => Err(ApiError::Conflict(format!(
            "no coordinator answers at {addr}: {e}; start one there with --join --id {id} first"
        ))),
    }
}

/// Waits until learner `id` has replicated the log as it was when it was added.
async fn wait_caught_up(c: &Coordinator, id: u64) -> Result<(), ApiError> {
    let target = c.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let caught_up = c
        .raft
        .wait(Some(CATCH_UP))
        .metrics(
            |m| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .is_some_and(|l| l.index >= target)
            },
            "the new member caught up",
        )
        .await;
    caught_up.map(|_| ()).map_err(|_| {
        ApiError::Conflict(format!(
            "node {id} did not catch up with the log within {} s; it was not added",
            CATCH_UP.as_secs()
        ))
    })
}

/// Removes a coordinator, unless that would leave the group without a reachable majority
/// (or without voters).
async fn remove_member(
    State(c): State<Arc<Coordinator>>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<ClusterStatus>, ApiError> {
    if !c.members().contains_key(&id) {
        return Err(ApiError::NotFound(format!("node {id} is not a member")));
    }
    let voters: BTreeSet<u64> = {
        let m = c.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    };
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(ApiError::Conflict("cannot remove the last voter".into()));
        }
        let rest: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
        if !c.links.quorum_within(c.id, &rest, c.step_down_after()) {
            return Err(ApiError::Conflict(format!(
                "removing node {id} would leave voters {rest:?}, of which no majority is \
                 reachable now"
            )));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    c.raft
        .change_membership(change, false)
        .await
        .map_err(|e| ApiError::Conflict(format!("cannot remove node {id}: {e}")))?;
    tracing::info!(node = id, "member removed");
    Ok(Json(local_status(&c)))
}
