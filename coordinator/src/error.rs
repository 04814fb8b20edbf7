//! The coordinator's one error type and its mapping to HTTP: every failure leaves as a status
//! code with a JSON [`ErrorBody`]. Extractor rejections (bad JSON, bad path, too large) are
//! mapped here too, so no handler can answer with a plain-text error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use idunno_api::ErrorBody;

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

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RangeNotSatisfiable(_) => "range_not_satisfiable",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden | ApiError::ForbiddenBecause(_) => "forbidden",
            ApiError::NotAMember(_) => "not_a_member",
            ApiError::NoLeader(_) => "no_leader",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code: self.code().to_string(),
            leader: None,
        };
        (status, Json(body)).into_response()
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

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(r.body_text()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
                "expected a JSON body with Content-Type: application/json".into(),
            ),
            _ => ApiError::BadRequest(r.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Path<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);
