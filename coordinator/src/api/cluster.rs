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

use crate::error::{ApiError, ApiJson, ApiPath};
use crate::forward::FORWARDED_HEADER;
use crate::node::Coordinator;

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
    let url = format!("{}/v1/cluster", idunno_api::client::base_url(leader));
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
        role: format!("{:?}", m.state).to_lowercase(),
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

/// Adds a coordinator: first as a learner (it catches up, by snapshot if need be), then as a
/// voter unless asked not to.
async fn add_member(
    State(c): State<Arc<Coordinator>>,
    ApiJson(body): ApiJson<NewMember>,
) -> Result<(StatusCode, Json<ClusterStatus>), ApiError> {
    if body.id == 0 || !body.addr.contains(':') {
        return Err(ApiError::BadRequest(
            "need an id ≥ 1 and an addr HOST:PORT".into(),
        ));
    }
    let node = BasicNode {
        addr: body.addr.clone(),
    };
    c.raft
        .add_learner(body.id, node, true)
        .await
        .map_err(|e| ApiError::Conflict(format!("cannot add node {}: {e}", body.id)))?;
    if body.voter {
        c.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([body.id])), true)
            .await
            .map_err(|e| {
                ApiError::Conflict(format!("cannot make node {} a voter: {e}", body.id))
            })?;
    }
    Ok((StatusCode::CREATED, Json(local_status(&c))))
}

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
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    c.raft
        .change_membership(change, false)
        .await
        .map_err(|e| ApiError::Conflict(format!("cannot remove node {id}: {e}")))?;
    Ok(Json(local_status(&c)))
}
