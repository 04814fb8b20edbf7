//! Access control: a bearer token on the client API (`/v1/…`) and a shared cluster secret on
//! the internal routes: `/raft/…`, and the storage nodes' registration and heartbeats (which
//! place nodes into the namespace and report blobs lost, so nothing else may send them).
//! Either is off when not configured (a local cluster). Health and metrics endpoints are
//! always open.
//!
//! Membership changes (`POST /v1/cluster/members`, `DELETE /v1/cluster/members/{id}`) are
//! administration: they need the cluster secret or the token whenever either is configured,
//! and one of them must be configured on a node that listens beyond the loopback interface.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use idunno_api::address::is_loopback;
use idunno_server::secret;

use crate::app::Coordinator;
use crate::error::ApiError;

use idunno_api::headers::SECRET_HEADER;

/// Checks the credentials a path requires.
pub async fn check(State(c): State<Arc<Coordinator>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_membership_change(req.method(), path) {
        return match membership_allowed(&c, &req) {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        };
    }
    if path.starts_with("/raft/") || is_storage_node_route(path) {
        if let Some(secret) = &c.config.cluster_secret {
            let given = req
                .headers()
                .get(SECRET_HEADER)
                .and_then(|v| v.to_str().ok());
            if !secret::matches(given, secret) {
                return ApiError::Forbidden.into_response();
            }
        }
    }
    if needs_token(path) {
        if let Some(token) = &c.config.token {
            let given = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !secret::matches(given, token) {
                return ApiError::Unauthorized.into_response();
            }
        }
    }
    next.run(req).await
}

/// `POST /v1/cluster/members` and `DELETE /v1/cluster/members/{id}`.
fn is_membership_change(method: &axum::http::Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    (*method == axum::http::Method::POST && path == "/v1/cluster/members")
        || (*method == axum::http::Method::DELETE && path.starts_with("/v1/cluster/members/"))
}

/// A membership change goes through with the cluster secret or the token, if either is
/// configured (either will do); with neither, only on a node that listens on loopback.
fn membership_allowed(c: &Coordinator, req: &Request) -> Result<(), ApiError> {
    let headers = req.headers();
    let secret_given = headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok());
    let token_given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let matches = |given: Option<&str>, want: &Option<String>| {
        want.as_deref().is_some_and(|w| secret::matches(given, w))
    };
    match (&c.config.cluster_secret, &c.config.token) {
        (None, None) if is_loopback(&c.addr) => Ok(()),
        (None, None) => Err(ApiError::ForbiddenBecause(
            "membership changes need a credential: start the coordinators with --cluster-secret \
             or --token (this node listens beyond 127.0.0.1)"
                .into(),
        )),
        (secret, token) => {
            if matches(secret_given, secret) || matches(token_given, token) {
                Ok(())
            } else {
                Err(ApiError::ForbiddenBecause(
                    "membership changes need the cluster secret (x-idunno-secret) or the token"
                        .into(),
                ))
            }
        }
    }
}

/// The client API: `/v1/…` and the inference protocol's `/v2…`, but for its health probes
/// (`/v2/health/…`), which load balancers call without credentials.
fn needs_token(path: &str) -> bool {
    path.starts_with("/v1/")
        || ((path == "/v2" || path.starts_with("/v2/")) && !path.starts_with("/v2/health/"))
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

#[cfg(test)]
mod tests {
    #[test]
    fn membership_changes_are_recognised() {
        use axum::http::Method;
        assert!(super::is_membership_change(
            &Method::POST,
            "/v1/cluster/members"
        ));
        assert!(super::is_membership_change(
            &Method::DELETE,
            "/v1/cluster/members/2"
        ));
        assert!(!super::is_membership_change(&Method::GET, "/v1/cluster"));
        assert!(!super::is_membership_change(
            &Method::GET,
            "/v1/cluster/members"
        ));
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
