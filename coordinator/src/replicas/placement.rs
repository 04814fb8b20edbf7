//! Placement: which storage nodes get a new blob, and in which order a blob's replicas are
//! read. Nodes holding the least data are filled first; readers try live replicas first.

use crate::state::State;

/// Up to `count` live nodes for a new blob, least loaded first (ties by id, for stable tests).
/// `usable` filters nodes the caller knows to be reachable.
pub fn choose_nodes(state: &State, count: usize, usable: impl Fn(&str) -> bool) -> Vec<String> {
    let mut candidates: Vec<(u64, String)> = state
        .alive_nodes()
        .filter(|n| usable(&n.id))
        .map(|n| (state.stored_bytes(&n.id), n.id.clone()))
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .take(count)
        .map(|(_, id)| id)
        .collect()
}

/// (node id, address, alive) of a blob's replicas, live ones first.
pub fn replicas_in_read_order(state: &State, hash: &str) -> Vec<(String, String, bool)> {
    let Some(blob) = state.blob(hash) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String, bool)> = blob
        .replicas
        .iter()
        .filter_map(|id| {
            state
                .node(id)
                .map(|n| (id.clone(), n.addr.clone(), n.alive))
        })
        .collect();
    out.sort_by_key(|(_, _, alive)| !*alive);
    out
}

/// Addresses of a blob's live replicas.
pub fn live_replicas(state: &State, hash: &str) -> Vec<String> {
    replicas_in_read_order(state, hash)
        .into_iter()
        .filter(|(_, _, alive)| *alive)
        .map(|(_, addr, _)| addr)
        .collect()
}
