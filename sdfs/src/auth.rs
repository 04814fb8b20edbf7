//! Access control: when a cluster secret is configured, every `/internal/…` route requires it
//! in the `x-idunno-secret` header (403 otherwise). `/healthz` and `/metrics` stay open.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::SdfsError;
use crate::node::Node;
use crate::SECRET_HEADER;

/// Checks the cluster secret on internal routes.
pub async fn check(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/internal" || path.starts_with("/internal/") {
        if let Some(secret) = &node.config.cluster_secret {
            let given = req
                .headers()
                .get(SECRET_HEADER)
                .and_then(|v| v.to_str().ok());
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), secret.as_bytes())) {
                return SdfsError::Forbidden.into_response();
            }
        }
    }
    next.run(req).await
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_compare_exactly() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
