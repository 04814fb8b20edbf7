//! Access control: a bearer token on the client API (`/v1/…`) and a shared cluster secret on
//! the internal routes: `/raft/…`, and the storage nodes' registration and heartbeats (which
//! place nodes into the namespace and report blobs lost, so nothing else may send them).
//! Either is off when not configured (a local cluster). Health and metrics endpoints are
//! always open.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::node::Coordinator;

/// Header carrying the cluster secret between IDunno processes.
pub const SECRET_HEADER: &str = "x-idunno-secret";

/// Checks the credentials a path requires.
pub async fn check(State(c): State<Arc<Coordinator>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/raft/") || is_storage_node_route(path) {
        if let Some(secret) = &c.config.cluster_secret {
            let given = req
                .headers()
                .get(SECRET_HEADER)
                .and_then(|v| v.to_str().ok());
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), secret.as_bytes())) {
                return ApiError::Forbidden.into_response();
            }
        }
    }
    if path.starts_with("/v1/") {
        if let Some(token) = &c.config.token {
            let given = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
                return ApiError::Unauthorized.into_response();
            }
        }
    }
    next.run(req).await
}

/// `/v1/nodes/register` and `/v1/nodes/{id}/heartbeat`: only storage nodes call these.
fn is_storage_node_route(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/nodes/") else {
        return false;
    };
    let rest = rest.trim_end_matches('/');
    rest == "register"
        || rest
            .strip_suffix("/heartbeat")
            .is_some_and(|id| !id.contains('/'))
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

    #[test]
    fn storage_node_routes_are_internal() {
        for p in [
            "/v1/nodes/register",
            "/v1/nodes/s1/heartbeat",
            "/v1/nodes/s1/heartbeat/",
        ] {
            assert!(super::is_storage_node_route(p), "{p}");
        }
        for p in ["/v1/nodes", "/v1/nodes/s1/files", "/v1/files/heartbeat"] {
            assert!(!super::is_storage_node_route(p), "{p}");
        }
    }
}
