//! Access control: when a cluster secret is configured, every `/internal/…` route requires it
//! in the `x-idunno-secret` header (403 otherwise). `/healthz` and `/metrics` stay open.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::SdfsError;
use crate::node::Node;
use idunno_api::headers::SECRET_HEADER;

/// Checks the cluster secret on internal routes.
pub async fn check(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/internal" || path.starts_with("/internal/") {
        if let Some(secret) = &node.config.cluster_secret {
            let given = req
                .headers()
                .get(SECRET_HEADER)
                .and_then(|v| v.to_str().ok());
            if !idunno_server::secret::matches(given, secret) {
                return SdfsError::Forbidden.into_response();
            }
        }
    }
    next.run(req).await
}
