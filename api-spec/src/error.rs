//! The JSON body of every 4xx/5xx answer: `{"error": "...", "code": "..."}`.

use serde::{Deserialize, Serialize};

/// What a failed request returns, whatever the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One human-readable sentence.
    pub error: String,
    /// A stable machine-readable kind, e.g. `not_found`, `bad_request`, `no_leader`.
    pub code: String,
    /// The leader's address when the answering node knows it and the error is about leadership.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}
