//! The coordinator's one error type and its mapping to HTTP: every failure leaves as a status
//! code with a JSON error body (`idunno_server::error_response`). Extractor rejections (bad
//! JSON, bad path, too large) answer the same way through `idunno_server`'s extractors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use idunno_api::error::ErrorCode;
use idunno_server::error_response;

use crate::state::command::CommandError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("missing or wrong cluster secret")]
    Forbidden,
    /// Refused, for the reason given.
    #[error("{0}")]
    ForbiddenBecause(String),
    /// This node is not a member of the coordinator group (it was removed): ask another.
    #[error("{0}")]
    NotAMember(String),
    /// No leader is known (an election is running, or there is no quorum).
    #[error("no leader: {0}")]
    NoLeader(String),
    /// A dependency (a peer, a storage node) failed; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// A fault inside this node (storage failure); never caused by the request.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::ForbiddenBecause(_) => StatusCode::FORBIDDEN,
            ApiError::NotAMember(_) => StatusCode::MISDIRECTED_REQUEST,
            ApiError::NoLeader(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::RangeNotSatisfiable(_) => ErrorCode::RangeNotSatisfiable,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::Forbidden | ApiError::ForbiddenBecause(_) => ErrorCode::Forbidden,
            ApiError::NotAMember(_) => ErrorCode::NotAMember,
            ApiError::NoLeader(_) => ErrorCode::NoLeader,
            ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status(), self.code(), self.to_string())
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound(m) => ApiError::NotFound(m),
            CommandError::Invalid(m) => ApiError::BadRequest(m),
            CommandError::Conflict(m) => ApiError::Conflict(m),
        }
    }
}

pub use idunno_server::{ApiJson, ApiPath, ApiQuery};
