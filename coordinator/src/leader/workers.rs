//! This node's record of the workers it hears from: soft state of every coordinator (workers
//! heartbeat each one), kept across leadership changes and never replicated (a heartbeat is
//! not a Raft write). A worker's id and name are replicated apart (`state/workers.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use idunno_api::worker::WorkerInfo;

/// What this node knows of one worker.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    pub name: String,
    pub capacity: u32,
    /// Models it will run; `None` = any (once described).
    pub accepts: Option<Vec<String>>,
    /// Whether its registration or a heartbeat reached this node: until then (an entry made
    /// by another call, say a lease call to a node that just restarted) it is not known
    /// which models it runs, and it is given none.
    pub described: bool,
    /// Models it has loaded.
    pub loaded: Vec<String>,
    pub last_seen: Instant,
}

impl WorkerEntry {
    /// Whether this worker runs `model`, as far as this node knows.
    pub fn runs(&self, model: &str) -> bool {
        self.described
            && self
                .accepts
                .as_ref()
                .is_none_or(|a| a.iter().any(|m| m == model))
    }
}

/// Workers by id.
#[derive(Debug, Default)]
pub struct Workers {
    map: HashMap<String, WorkerEntry>,
}

impl Workers {
    /// Records a sign of life, creating the entry if this node has not heard from the worker
    /// yet (it registered while this node was down, or with another leader).
    pub fn seen(&mut self, id: &str) -> &mut WorkerEntry {
        let entry = self
            .map
            .entry(id.to_string())
            .or_insert_with(|| WorkerEntry {
                name: String::new(),
                capacity: 1,
                accepts: None,
                described: false,
                loaded: Vec::new(),
                last_seen: Instant::now(),
            });
        entry.last_seen = Instant::now();
        entry
    }

    /// When the worker was last heard from, if ever by this node.
    pub fn last_seen(&self, id: &str) -> Option<Instant> {
        self.map.get(id).map(|w| w.last_seen)
    }

    /// Whether the worker runs `model`: as its registration or last heartbeat said; `false`
    /// for a worker that has not described itself to this node yet (its next heartbeat, to
    /// every coordinator, will).
    pub fn accepts(&self, id: &str, model: &str) -> bool {
        self.map.get(id).is_some_and(|w| w.runs(model))
    }

    pub fn get(&self, id: &str) -> Option<&WorkerEntry> {
        self.map.get(id)
    }

    /// Forgets a worker (it deregistered).
    pub fn remove(&mut self, id: &str) -> bool {
        self.map.remove(id).is_some()
    }

    /// Drops workers silent for longer than `forget_after`.
    pub fn forget_silent(&mut self, forget_after: Duration) {
        self.map.retain(|_, w| w.last_seen.elapsed() < forget_after);
    }

    /// Workers heard from within `alive` that have `model` loaded.
    pub fn with_model(&self, model: &str, alive: Duration) -> Vec<String> {
        let mut ids: Vec<String> = self
            .map
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() < alive && w.loaded.iter().any(|m| m == model))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub fn list(&self) -> Vec<WorkerInfo> {
        let mut out: Vec<WorkerInfo> = self
            .map
            .iter()
            .map(|(id, w)| WorkerInfo {
                id: id.clone(),
                name: w.name.clone(),
                capacity: w.capacity,
                accepts: w.accepts.clone(),
                loaded: w.loaded.clone(),
                last_seen_ms_ago: w.last_seen.elapsed().as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// A fresh worker id.
pub fn new_worker_id() -> String {
    format!("w{:012x}", rand::random::<u64>() >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_runs_only_what_it_said_and_nothing_before_it_said() {
        let mut workers = Workers::default();
        // Known from a lease call alone: which models it runs is unknown.
        workers.seen("w1");
        assert!(!workers.accepts("w1", "resnet50"));
        assert!(!workers.accepts("nobody", "resnet50"));
        // Its heartbeat names its models.
        let w = workers.seen("w1");
        w.described = true;
        w.accepts = Some(vec!["resnet50".into()]);
        assert!(workers.accepts("w1", "resnet50"));
        assert!(!workers.accepts("w1", "inception"));
        // A worker that runs every model.
        let w = workers.seen("w2");
        w.described = true;
        assert!(workers.accepts("w2", "inception"));
    }
}
