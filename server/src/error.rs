//! Errors as HTTP answers: a status and `{"error", "code"}`, whatever the route. A server's
//! own error type turns itself into one with [`error_response`]; the extractors here turn
//! malformed requests (bad JSON, wrong content type, too large, bad path or query) into one
//! too, so no route can answer with plain text.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use idunno_api::error::ErrorCode;
use idunno_api::ErrorBody;

/// `status` with the JSON error body of `code` and `message`; 5xx answers are logged.
pub fn error_response(status: StatusCode, code: ErrorCode, message: String) -> Response {
    if status.is_server_error() {
        tracing::warn!(error = %message, "request failed");
    }
    let body = ErrorBody {
        error: message,
        code: code.as_str().to_string(),
        leader: None,
    };
    (status, Json(body)).into_response()
}

/// A request an extractor refused: a 400, 413 or 415 with a JSON body.
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    fn bad_request(message: String) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::BadRequest,
            message,
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, self.message)
    }
}

impl From<JsonRejection> for Rejection {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Rejection {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: ErrorCode::PayloadTooLarge,
                message: r.body_text(),
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Rejection {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: ErrorCode::UnsupportedMediaType,
                message: "expected a JSON body with Content-Type: application/json".into(),
            },
            _ => Rejection::bad_request(r.body_text()),
        }
    }
}

impl From<PathRejection> for Rejection {
    fn from(r: PathRejection) -> Self {
        Rejection::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for Rejection {
    fn from(r: QueryRejection) -> Self {
        Rejection::bad_request(r.body_text())
    }
}

/// `Json<T>` whose rejections are JSON errors.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(Rejection))]
pub struct ApiJson<T>(pub T);

/// `Path<T>` whose rejections are JSON errors.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Rejection))]
pub struct ApiPath<T>(pub T);

/// `Query<T>` whose rejections are JSON errors.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Rejection))]
pub struct ApiQuery<T>(pub T);
