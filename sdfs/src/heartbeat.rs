//! The node's link to the coordinators: it registers (`POST /v1/nodes/register`), retrying
//! quietly until a coordinator answers, then heartbeats every `heartbeat-ms` with what it
//! holds and the blobs it lost. Both carry the cluster secret (the coordinators require it
//! on these routes when one is set). A lost blob is forgotten only once a heartbeat carrying it
//! was accepted; a 404 means the coordinators forgot this node, so it registers again.
//! Serving blobs never waits for any of this.

use std::sync::Arc;
use std::time::Duration;

use idunno_api::client::ClientError;
use idunno_api::file::{NodeHeartbeat, NodeRegistration};
use idunno_api::Client;
use reqwest::Method;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::blob_store::LostBlobs;
use crate::node::Node;
use crate::transfer::blocking;
use idunno_api::headers::SECRET_HEADER;

/// Longest wait between two registration attempts.
const MAX_REGISTER_BACKOFF: Duration = Duration::from_secs(2);

/// Registers and heartbeats until the node shuts down.
pub async fn run(node: Arc<Node>, client: Client) {
    let mut shutdown = node.shutdown.clone();
    let interval = node.config.heartbeat_interval();
    // One call may retry across the coordinators for a while, but not so long that the
    // lost-blob report or the liveness signal falls far behind.
    let register_client = client.with_deadline(Duration::from_secs(2));
    let heartbeat_client = client.with_deadline((interval * 3).max(Duration::from_secs(1)));
    loop {
        if !register(&node, &register_client, &mut shutdown).await {
            return;
        }
        if !heartbeat_until_forgotten(&node, &heartbeat_client, &mut shutdown).await {
            return;
        }
        tracing::info!("the coordinators do not know this node; registering again");
    }
}

/// `POST path` with a JSON body and the cluster secret, retried across the coordinators.
async fn post<B: Serialize>(
    node: &Node,
    client: &Client,
    path: &str,
    body: &B,
) -> Result<(), ClientError> {
    let payload = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let secret = node.config.cluster_secret.as_deref();
    client
        .send(Method::POST, path, |req| {
            let req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload.clone());
            match secret {
                Some(s) => req.header(SECRET_HEADER, s),
                None => req,
            }
        })
        .await
        .map(|_| ())
}

/// Registers, retrying until it works; `false` if the node shut down first.
async fn register(node: &Node, client: &Client, shutdown: &mut watch::Receiver<bool>) -> bool {
    let registration = NodeRegistration {
        id: node.config.id.clone(),
        addr: node.addr.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let call = post(node, client, "/v1/nodes/register", &registration);
        let result = tokio::select! {
            r = call => r,
            _ = shutdown.wait_for(|s| *s) => return false,
        };
        match result {
            Ok(_) => {
                tracing::info!(id = %registration.id, addr = %registration.addr, "registered with the coordinators");
                return true;
            }
            Err(e) => tracing::debug!(error = %e, "registration failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return false,
        }
        backoff = (backoff * 2).min(MAX_REGISTER_BACKOFF);
    }
}

/// Heartbeats until a coordinator answers 404 (`true`: register again) or the node shuts
/// down (`false`).
async fn heartbeat_until_forgotten(
    node: &Node,
    client: &Client,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let path = format!("/v1/nodes/{}/heartbeat", node.config.id);
    let mut tick = tokio::time::interval(node.config.heartbeat_interval());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return false,
        }
        let store = node.store.clone();
        let lost = match blocking(move || store.lost()).await {
            Ok(lost) => lost,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the lost-blob set");
                LostBlobs::default()
            }
        };
        let totals = node.store.totals();
        let beat = NodeHeartbeat {
            blobs: totals.blobs,
            bytes: totals.bytes,
            lost: lost.hashes().iter().map(|h| h.to_hex()).collect(),
        };
        let result = tokio::select! {
            r = post(node, client, &path, &beat) => r,
            _ = shutdown.wait_for(|s| *s) => return false,
        };
        match result {
            Ok(_) => {
                node.metrics.heartbeats.inc();
                node.metrics.coordinators_reachable.set(1);
                if failing {
                    tracing::info!("heartbeats accepted again");
                    failing = false;
                }
                if !lost.is_empty() {
                    tracing::info!(blobs = beat.lost.len(), "reported lost blobs");
                    let store = node.store.clone();
                    if let Err(e) = blocking(move || store.clear_lost(&lost)).await {
                        tracing::warn!(error = %e, "cannot clear the lost-blob set");
                    }
                }
            }
            Err(e) if e.status() == Some(404) => return true,
            Err(e) => {
                node.metrics.coordinators_reachable.set(0);
                if !failing {
                    tracing::info!(error = %e, "heartbeat failed; retrying");
                    failing = true;
                } else {
                    tracing::debug!(error = %e, "heartbeat failed");
                }
            }
        }
    }
}
