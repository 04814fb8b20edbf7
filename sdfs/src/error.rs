//! The storage node's one error type and its mapping to HTTP: every failure leaves as a status
//! code with a JSON [`ErrorBody`], never as plain text. Extractor rejections (bad JSON, bad
//! path) are mapped here too, so no route can answer outside this format.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use idunno_api::error::ErrorCode;
use idunno_api::ErrorBody;

/// Everything the store, a request or starting a node can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SdfsError {
    /// The request is malformed: a bad hash, range, header or JSON body.
    #[error("{0}")]
    BadRequest(String),
    /// No such blob (or route).
    #[error("{0}")]
    NotFound(String),
    /// The content does not have the hash the writer promised; nothing was kept.
    #[error("content hash mismatch: expected {expected}, got {actual}; nothing was stored")]
    HashMismatch { expected: String, actual: String },
    /// A `Range` outside the blob.
    #[error("range not satisfiable: the blob has {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// The upload's body ended with an error (the client went away); nothing was kept.
    #[error("upload interrupted: {0}")]
    Interrupted(String),
    /// A stored chunk failed its checksum (or vanished): the blob was dropped from this node
    /// and will be reported lost at the next heartbeat.
    #[error("blob {hash} is corrupt on this node; it was dropped and will be re-replicated")]
    Corrupt { hash: String },
    /// The node a blob is fetched from failed or answered with an error.
    #[error("fetching from another node failed: {0}")]
    Upstream(String),
    /// A conditional delete named a stamp the blob no longer has: it was stored again since.
    #[error("the blob was stored again since (its stamp is now {stamp}); it was kept")]
    StampChanged { stamp: u64 },
    #[error("missing or wrong cluster secret")]
    Forbidden,
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The node is stopping; the request was cut short.
    #[error("the storage node is shutting down")]
    ShuttingDown,
    /// A bad setting; the node does not start.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// sled failed (disk full, I/O error, a page that failed sled's own checks).
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A fault inside this node that the request did not cause.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SdfsError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            SdfsError::BadRequest(_)
            | SdfsError::HashMismatch { .. }
            | SdfsError::Interrupted(_) => StatusCode::BAD_REQUEST,
            SdfsError::NotFound(_) => StatusCode::NOT_FOUND,
            SdfsError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            SdfsError::Forbidden => StatusCode::FORBIDDEN,
            SdfsError::StampChanged { .. } => StatusCode::PRECONDITION_FAILED,
            SdfsError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            SdfsError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            SdfsError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            SdfsError::Upstream(_) => StatusCode::BAD_GATEWAY,
            SdfsError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            SdfsError::Corrupt { .. }
            | SdfsError::Config(_)
            | SdfsError::Storage(_)
            | SdfsError::Io(_)
            | SdfsError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable kind put in [`ErrorBody::code`].
    pub fn code(&self) -> ErrorCode {
        match self {
            SdfsError::BadRequest(_) => ErrorCode::BadRequest,
            SdfsError::NotFound(_) => ErrorCode::NotFound,
            SdfsError::HashMismatch { .. } => ErrorCode::HashMismatch,
            SdfsError::RangeNotSatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
            SdfsError::Interrupted(_) => ErrorCode::Interrupted,
            SdfsError::Corrupt { .. } => ErrorCode::Corrupt,
            SdfsError::Upstream(_) => ErrorCode::BadGateway,
            SdfsError::Forbidden => ErrorCode::Forbidden,
            SdfsError::StampChanged { .. } => ErrorCode::StampChanged,
            SdfsError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            SdfsError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            SdfsError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            SdfsError::ShuttingDown => ErrorCode::Unavailable,
            SdfsError::Config(_)
            | SdfsError::Storage(_)
            | SdfsError::Io(_)
            | SdfsError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            code: self.code().as_str().to_string(),
            leader: None,
        }
    }
}

impl From<tokio::task::JoinError> for SdfsError {
    fn from(e: tokio::task::JoinError) -> Self {
        SdfsError::Internal(format!("a storage task failed: {e}"))
    }
}

impl IntoResponse for SdfsError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        if let SdfsError::RangeNotSatisfiable { size } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        response
    }
}

pub use idunno_server::{ApiJson, ApiPath};

impl From<idunno_api::range::RangeError> for SdfsError {
    fn from(e: idunno_api::range::RangeError) -> Self {
        match e {
            idunno_api::range::RangeError::Malformed(m) => SdfsError::BadRequest(m),
            idunno_api::range::RangeError::Unsatisfiable { size } => {
                SdfsError::RangeNotSatisfiable { size }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_status() {
        let e = SdfsError::HashMismatch {
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.body().code, "hash_mismatch");
        let r = SdfsError::RangeNotSatisfiable { size: 10 }.into_response();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
