//! Whether this coordinator is still a member of its group. A node removed while it was
//! unreachable, or cut off, may never receive the configuration change that removed it: it
//! keeps its old membership and campaigns in vain. So while it knows no leader, it asks the
//! members it knows of; one that has a leader and no longer lists this node settles it, and
//! the API then says "not a member" (421) instead of "no leader" for ever.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use idunno_api::cluster::ClusterStatus;

use crate::app::Coordinator;
use crate::forward::FORWARDED_HEADER;
use idunno_api::headers::NODE_HEADER;

/// How often a node without a leader asks its peers.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// The watch; ends at shutdown.
pub async fn watch_removal(c: Arc<Coordinator>) {
    let mut shutdown = c.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ASK_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if c.leader().is_some() {
            c.removed.store(false, Ordering::Relaxed);
            continue;
        }
        for (id, addr) in c.members() {
            if id == c.id || c.links.is_cut(id) {
                continue;
            }
            let Some(status) = ask(&c, &addr).await else {
                continue;
            };
            if status.leader_id.is_none() {
                continue;
            }
            let member = status.members.iter().any(|m| m.id == c.id);
            if !member && !c.removed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    node = c.id,
                    peer = id,
                    "this node was removed from the group"
                );
            }
            if member {
                c.removed.store(false, Ordering::Relaxed);
            }
            break;
        }
    }
}

/// A peer's own `GET /v1/cluster`.
async fn ask(c: &Coordinator, addr: &str) -> Option<ClusterStatus> {
    let url = format!("{}/v1/cluster", c.scheme.base_url(addr));
    let mut req = c
        .http
        .get(url)
        .header(FORWARDED_HEADER, "1")
        .header(NODE_HEADER, c.id.to_string())
        .timeout(Duration::from_millis(c.config.election_max_ms * 2));
    if let Some(token) = &c.config.token {
        req = req.bearer_auth(token);
    }
    req.send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()
}
