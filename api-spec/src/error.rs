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

/// Every `code` an IDunno server answers with, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    NotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    /// This coordinator is no member of the group: ask another (421).
    NotAMember,
    /// No leader now (an election, or this node is cut off): retry (503).
    NoLeader,
    Unavailable,
    Internal,
    /// A storage node: the content does not hash to what was expected.
    HashMismatch,
    /// A storage node: a stored blob failed its checksum.
    Corrupt,
    /// A storage node: a conditional delete found the blob stored again.
    StampChanged,
    /// A storage node: another node it read from failed.
    BadGateway,
    /// A storage node: the transfer broke off.
    Interrupted,
}

impl ErrorCode {
    /// The code as it travels in [`ErrorBody::code`].
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::StampChanged => "stamp_changed",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::Interrupted => "interrupted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_travel_as_their_snake_case_names() {
        for code in [
            ErrorCode::NotAMember,
            ErrorCode::RangeNotSatisfiable,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
