//! The workers the cluster knows, in the replicated state: id → name, so that every
//! coordinator can say who serves a job (C5) and a new leader knows the workers registered
//! with an old one. Liveness is not here: heartbeats are the leaders' soft state.

use idunno_api::Millis;
use serde::{Deserialize, Serialize};

use super::{Key, State};

/// Longest worker name kept.
pub const MAX_NAME: usize = 128;

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub name: String,
    pub registered_at_ms: Millis,
}

impl State {
    /// Registers (or renames) a worker. Names are cut to [`MAX_NAME`] bytes on a character
    /// boundary; control characters become spaces.
    pub(super) fn register_worker(&mut self, id: String, name: String, now: Millis) {
        let mut name: String = name
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        while name.len() > MAX_NAME {
            name.pop();
        }
        let registered_at_ms = self.workers.get(&id).map_or(now, |w| w.registered_at_ms);
        self.touch(Key::Worker(id.clone()));
        self.workers.insert(
            id.clone(),
            WorkerRecord {
                id,
                name,
                registered_at_ms,
            },
        );
    }

    /// Forgets a worker; its leases are the caller's business.
    pub(super) fn deregister_worker(&mut self, id: &str) -> bool {
        self.touch(Key::Worker(id.to_string()));
        self.workers.remove(id).is_some()
    }

    /// A worker's name ("" if it is not registered).
    pub fn worker_name(&self, id: &str) -> String {
        self.workers
            .get(id)
            .map(|w| w.name.clone())
            .unwrap_or_default()
    }

    /// Whether a worker id is registered.
    pub fn is_registered_worker(&self, id: &str) -> bool {
        self.workers.contains_key(id)
    }
}
