//! The SDFS namespace in the replicated state: file name → versions.

use serde::{Deserialize, Serialize};

use super::State;

/// A file name and its versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
}

impl State {
    /// Names under a prefix, in name order.
    pub fn files_under(&self, prefix: &str) -> Vec<String> {
        self.files
            .range(prefix.to_string()..)
            .take_while(|(p, _)| p.starts_with(prefix))
            .map(|(p, _)| p.clone())
            .collect()
    }
}
