//! Keeping every blob at its replication factor, run by the leader: copy under-replicated
//! blobs from a live replica to the least-loaded live node, trim over-replicated ones (a node
//! came back), reconcile what nodes actually hold with the namespace, and delete the copies of
//! blobs no version uses any more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use super::gc::collect_garbage;
use super::{storage, Deletion};
use crate::app::Coordinator;
use crate::state::command::{Command, Response};
use crate::state::files::FreedBlob;
use crate::state::State;

/// Copies (or trims) running at once.
const PARALLEL: usize = 8;
/// How often every live node's holdings are reconciled even without a reason.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// One step toward the wanted replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Copy `hash` (`size` bytes) from the node at `from` to node `to`.
    Copy {
        hash: String,
        size: u64,
        from: String,
        to: String,
        to_addr: String,
    },
    /// Remove the copy of `hash` on `node`: the blob has more live copies than wanted.
    Trim {
        hash: String,
        node: String,
        addr: String,
    },
    /// Take dead `nodes` out of the replica set of `hash`: it is fully replicated on live
    /// nodes again. (A node that comes back then holds an extra copy, which reconciliation
    /// counts again and trimming removes.)
    Forget { hash: String, nodes: Vec<String> },
}

/// Copies short of the blobs' replication factors on the live nodes (summed), and the copies
/// [`plan`] would make now: the `/metrics` view of repair.
pub fn shortfall(state: &State) -> (usize, usize) {
    let alive: HashSet<&str> = state.alive_nodes().map(|n| n.id.as_str()).collect();
    let missing = state
        .blobs()
        .map(|b| {
            let live = b
                .replicas
                .iter()
                .filter(|r| alive.contains(r.as_str()))
                .count();
            (b.target as usize).min(alive.len()).saturating_sub(live)
        })
        .sum();
    let copies = plan(state, &HashSet::new())
        .iter()
        .filter(|a| matches!(a, Action::Copy { .. }))
        .count();
    (missing, copies)
}

/// What to do now, from the namespace alone; no copy goes to a node in `avoid` (one being
/// reconciled, whose copies are not counted yet, or one a copy recently failed on).
pub fn plan(state: &State, avoid: &HashSet<String>) -> Vec<Action> {
    let alive: BTreeMap<&str, &str> = state
        .alive_nodes()
        .map(|n| (n.id.as_str(), n.addr.as_str()))
        .collect();
    let mut load: HashMap<&str, u64> = alive.keys().map(|id| (*id, 0)).collect();
    for blob in state.blobs() {
        for r in &blob.replicas {
            if let Some(l) = load.get_mut(r.as_str()) {
                *l += blob.size;
            }
        }
    }
    let mut actions = Vec::new();
    for blob in state.blobs() {
        let live: Vec<&str> = blob
            .replicas
            .iter()
            .map(String::as_str)
            .filter(|r| alive.contains_key(r))
            .collect();
        if live.is_empty() {
            continue; // nothing to copy from: every holder is down
        }
        let want = (blob.target as usize).min(alive.len());
        if live.len() < want {
            let mut targets: Vec<(&str, u64)> = alive
                .keys()
                .filter(|id| !blob.replicas.contains(**id) && !avoid.contains(**id))
                .map(|id| (*id, load[id]))
                .collect();
            targets.sort_by_key(|(id, l)| (*l, *id));
            for (i, (to, _)) in targets.into_iter().take(want - live.len()).enumerate() {
                let from = live[i % live.len()];
                actions.push(Action::Copy {
                    hash: blob.hash.clone(),
                    size: blob.size,
                    from: alive[from].to_string(),
                    to: to.to_string(),
                    to_addr: alive[to].to_string(),
                });
                if let Some(l) = load.get_mut(to) {
                    *l += blob.size;
                }
            }
        } else if live.len() > blob.target as usize {
            let mut by_load: Vec<&str> = live.clone();
            by_load.sort_by_key(|id| (std::cmp::Reverse(load[id]), *id));
            for node in by_load.into_iter().take(live.len() - blob.target as usize) {
                actions.push(Action::Trim {
                    hash: blob.hash.clone(),
                    node: node.to_string(),
                    addr: alive[node].to_string(),
                });
                if let Some(l) = load.get_mut(node) {
                    *l = l.saturating_sub(blob.size);
                }
            }
        }
        if live.len() >= blob.target as usize && live.len() < blob.replicas.len() {
            let dead: Vec<String> = blob
                .replicas
                .iter()
                .filter(|r| !alive.contains_key(r.as_str()))
                .cloned()
                .collect();
            actions.push(Action::Forget {
                hash: blob.hash.clone(),
                nodes: dead,
            });
        }
    }
    actions
}

/// The repair loop; ends at shutdown.
pub async fn repair_loop(c: Arc<Coordinator>) {
    let mut shutdown = c.shutdown.clone();
    let mut last_full_reconcile = Instant::now();
    loop {
        tokio::select! {
            _ = c.repair_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !c.is_leader() {
            continue;
        }
        if last_full_reconcile.elapsed() > RECONCILE_EVERY {
            last_full_reconcile = Instant::now();
            let alive: Vec<String> = c
                .shared
                .read()
                .state
                .alive_nodes()
                .map(|n| n.id.clone())
                .collect();
            c.leader_state().storage.to_reconcile.extend(alive);
        }
        let nodes: Vec<String> = c.leader_state().storage.to_reconcile.drain().collect();
        for node in nodes {
            if let Err(e) = reconcile(&c, &node).await {
                tracing::debug!(node = %node, error = %e, "reconcile failed; will retry");
                c.leader_state().storage.to_reconcile.insert(node);
            }
        }
        // Repeat while there is work: each round commits what it did, then re-plans.
        loop {
            let avoid = c.leader_state().storage.avoid_as_targets();
            let actions = plan(&c.shared.read().state, &avoid);
            if actions.is_empty() || !c.is_leader() {
                break;
            }
            let progress = run(&c, actions).await;
            if progress == 0 {
                break;
            }
        }
    }
}

/// Runs actions concurrently; returns how many succeeded. Every call to a node is bounded in
/// time, so a hung node delays a round, never stops it.
async fn run(c: &Arc<Coordinator>, actions: Vec<Action>) -> usize {
    let started = Instant::now();
    let count = actions.len();
    let done = stream::iter(actions)
        .map(|a| {
            let c = c.clone();
            async move { execute(&c, a).await }
        })
        .buffer_unordered(PARALLEL)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    tracing::info!(
        done,
        of = count,
        ms = started.elapsed().as_millis() as u64,
        "repair round"
    );
    done
}

async fn execute(c: &Arc<Coordinator>, action: Action) -> bool {
    let nodes = storage(c);
    match action {
        Action::Copy {
            hash,
            size,
            from,
            to,
            to_addr,
        } => match nodes.fetch_blob(&to_addr, &hash, &from, size).await {
            Ok(stored) if stored.hash == hash => {
                let cmd = Command::AddReplicas {
                    hash: hash.clone(),
                    nodes: vec![to.clone()],
                };
                match c.write(String::new(), cmd).await {
                    Ok(Response::Replicas { known: false }) => {
                        // Freed while it was copied: the new copy is garbage.
                        let freed = FreedBlob {
                            hash,
                            replicas: vec![to],
                        };
                        collect_garbage(c, vec![freed]);
                        true
                    }
                    Ok(_) => true,
                    Err(_) => false,
                }
            }
            Ok(stored) => {
                tracing::warn!(%hash, got = %stored.hash, "a copy came back with another hash");
                c.leader_state().storage.copy_failed(&to);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "copy failed");
                // A failed source (dead, not yet marked) is no reason to avoid the target.
                if !e.upstream() {
                    c.leader_state().storage.copy_failed(&to);
                }
                false
            }
        },
        Action::Forget { hash, nodes } => {
            let cmd = Command::DropReplicas { hash, nodes };
            c.write(String::new(), cmd).await.is_ok()
        }
        Action::Trim { hash, node, addr } => {
            // The stamp first: a put of the same content that stores it on this node again
            // after this point (and will list the node) keeps the copy.
            let stamp = match nodes.blob_stamp(&addr, &hash).await {
                Ok(stamp) => stamp,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot trim a copy now");
                    return false;
                }
            };
            let cmd = Command::DropReplicas {
                hash: hash.clone(),
                nodes: vec![node],
            };
            if c.write(String::new(), cmd).await.is_err() {
                return false;
            }
            if let Some(stamp) = stamp {
                match nodes.delete_blob(&addr, &hash, Some(stamp)).await {
                    Ok(Deletion::Gone) => {}
                    Ok(Deletion::Kept) => {
                        tracing::debug!(%hash, "trimmed copy stored again; reconciliation counts it")
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "trimmed copy not deleted; reconciliation will")
                    }
                }
            }
            true
        }
    }
}

/// Compares what `node` holds with what the namespace says it holds, and fixes the namespace
/// (lost copies dropped, surviving copies counted again — trimming then removes any surplus)
/// and the node (copies of blobs no file uses, once older than the grace period, deleted).
pub async fn reconcile(c: &Coordinator, node: &str) -> Result<(), String> {
    let addr = match c.shared.read().state.node(node) {
        Some(n) if n.alive => n.addr.clone(),
        _ => return Ok(()),
    };
    let nodes = storage(c);
    let held = nodes.list_blobs(&addr).await.map_err(|e| e.to_string())?;
    let grace = c.config.gc_grace_ms;
    let mut commands = Vec::new();
    let mut orphans = Vec::new();
    {
        let applied = c.shared.read();
        let state = &applied.state;
        let held_set: HashSet<&str> = held.iter().map(|b| b.hash.as_str()).collect();
        for blob in state.blobs() {
            if blob.replicas.contains(node) && !held_set.contains(blob.hash.as_str()) {
                commands.push(Command::DropReplicas {
                    hash: blob.hash.clone(),
                    nodes: vec![node.to_string()],
                });
            }
        }
        for info in &held {
            match state.blob(&info.hash) {
                Some(blob) if blob.replicas.contains(node) => {}
                Some(_) => commands.push(Command::AddReplicas {
                    hash: info.hash.clone(),
                    nodes: vec![node.to_string()],
                }),
                None if info.age_ms > grace => orphans.push(info),
                None => {}
            }
        }
    }
    for cmd in commands {
        c.write(String::new(), cmd)
            .await
            .map_err(|e| e.to_string())?;
    }
    for info in orphans {
        // Conditional on the listed stamp: stored again since (a put in flight), it stays.
        let stamp = (info.stamp != 0).then_some(info.stamp);
        if let Err(e) = nodes.delete_blob(&addr, &info.hash, stamp).await {
            tracing::debug!(error = %e, "orphan not deleted");
        }
    }
    c.repair_wake.notify_one();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::Request;

    fn state(nodes: &[(&str, bool)], blobs: &[(&str, &[&str], u32)]) -> State {
        let mut s = State::default();
        let mut apply = |cmd| {
            s.apply(Request {
                id: String::new(),
                time_ms: 1,
                cmd,
            })
        };
        for (id, _) in nodes {
            apply(Command::RegisterNode {
                id: id.to_string(),
                addr: format!("{id}:1"),
            });
        }
        for (i, (name, replicas, target)) in blobs.iter().enumerate() {
            apply(Command::PutVersion {
                path: name.to_string(),
                hash: blake3::hash(&[i as u8]).to_hex().to_string(),
                size: 100,
                replicas: replicas.iter().map(|r| r.to_string()).collect(),
                target: *target,
                keep: 5,
            });
        }
        for (id, alive) in nodes {
            apply(Command::SetNodeAlive {
                id: id.to_string(),
                alive: *alive,
            });
        }
        s
    }

    #[test]
    fn a_blob_that_lost_a_replica_is_copied_to_a_live_node_not_holding_it() {
        let s = state(
            &[("a", true), ("b", true), ("c", false), ("d", true)],
            &[("f", &["a", "b", "c"], 3)],
        );
        let actions = plan(&s, &HashSet::new());
        assert_eq!(actions.len(), 1);
        match &actions[0] {
            Action::Copy { to, from, .. } => {
                assert_eq!(to, "d");
                assert!(from == "a:1" || from == "b:1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_is_copied_beyond_the_live_node_count_or_from_nowhere() {
        let s = state(
            &[("a", true), ("b", false)],
            &[("f", &["a"], 3), ("g", &["b"], 3)],
        );
        assert!(plan(&s, &HashSet::new()).is_empty());
    }

    #[test]
    fn a_blob_with_too_many_live_copies_is_trimmed() {
        let s = state(
            &[("a", true), ("b", true), ("c", true), ("d", true)],
            &[("f", &["a", "b", "c", "d"], 3)],
        );
        let actions = plan(&s, &HashSet::new());
        assert_eq!(actions.len(), 1);
        assert!(matches!(actions[0], Action::Trim { .. }));
    }

    #[test]
    fn dead_holders_leave_the_set_only_once_live_copies_suffice() {
        // Back to 3 live copies: the dead holder is forgotten.
        let s = state(
            &[("a", true), ("b", true), ("c", false), ("d", true)],
            &[("f", &["a", "b", "c", "d"], 3)],
        );
        match plan(&s, &HashSet::new()).as_slice() {
            [Action::Forget { nodes, .. }] => assert_eq!(nodes, &["c".to_string()]),
            other => panic!("{other:?}"),
        }
        // Short of 3 with nowhere to copy: the dead copy stays listed (it may come back).
        let s = state(
            &[("a", true), ("b", true), ("c", false)],
            &[("f", &["a", "b", "c"], 3)],
        );
        assert!(plan(&s, &HashSet::new()).is_empty());
    }

    #[test]
    fn nodes_to_avoid_get_no_copies() {
        let s = state(
            &[
                ("a", true),
                ("b", true),
                ("c", false),
                ("d", true),
                ("e", true),
            ],
            &[("f", &["a", "b", "c"], 3)],
        );
        let avoid: HashSet<String> = ["d".to_string()].into();
        match plan(&s, &avoid).as_slice() {
            [Action::Copy { to, .. }] => assert_eq!(to, "e"),
            other => panic!("{other:?}"),
        }
        let avoid: HashSet<String> = ["d".to_string(), "e".to_string()].into();
        assert!(plan(&s, &avoid).is_empty());
    }

    #[test]
    fn copies_go_to_the_least_loaded_nodes() {
        let s = state(
            &[("a", true), ("b", true), ("c", true), ("d", true)],
            &[("x", &["c"], 1), ("y", &["c"], 1), ("f", &["a"], 2)],
        );
        let copies: Vec<_> = plan(&s, &HashSet::new())
            .into_iter()
            .filter_map(|a| match a {
                Action::Copy { to, .. } => Some(to),
                _ => None,
            })
            .collect();
        assert_eq!(copies, vec!["b".to_string()]);
    }
}
