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
    /// Models it will run; `None` = any.
    pub accepts: Option<Vec<String>>,
    /// Models it has loaded.
    pub loaded: Vec<String>,
    pub last_seen: Instant,
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

    /// Whether the worker runs `model` (unknown workers run anything).
    pub fn accepts(&self, id: &str, model: &str) -> bool {
        match self.map.get(id).and_then(|w| w.accepts.as_ref()) {
            Some(list) => list.iter().any(|m| m == model),
            None => true,
        }
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
