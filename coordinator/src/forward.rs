//! Any coordinator accepts any request: a write (or a read of the leader's soft state) that
//! reaches a follower is passed to the leader as-is, bodies streamed both ways, so a plain curl
//! to any node works. A request already forwarded once is never forwarded again (no loops
//! during an election): it gets a 503 and the client retries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;

use crate::app::Coordinator;
use crate::capped::{capped, CapError};
use crate::error::ApiError;
use idunno_api::headers::NODE_HEADER;

/// Marks a request a coordinator forwarded.
pub use idunno_api::headers::FORWARDED_HEADER;

/// Headers that describe one hop, not the request; never copied.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
];

/// True if the request must be served by the leader. Reads are served by any node, and so
/// are worker heartbeats: a worker sends them to every coordinator, and each keeps its own
/// record of which workers are alive.
fn needs_leader(method: &Method, path: &str) -> bool {
    if path.starts_with("/v2/models/") {
        // Inference requests are batched in the leader's memory; metadata is a read.
        return *method == Method::POST;
    }
    if !path.starts_with("/v1/") {
        return false;
    }
    let reads = *method == Method::GET || *method == Method::HEAD;
    let heartbeat = *method == Method::POST && is_worker_heartbeat(path);
    !reads && !heartbeat
}

/// `/v1/workers/{id}/heartbeat`.
fn is_worker_heartbeat(path: &str) -> bool {
    path.strip_prefix("/v1/workers/")
        .and_then(|rest| rest.strip_suffix("/heartbeat"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// True if a path has a `.` or `..` segment (also percent-encoded). No route takes one, and
/// an HTTP client would resolve it away when forwarding, changing what the request names.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase().replace("%2e", ".");
        lower == "." || lower == ".."
    })
}

/// Middleware: serve locally if we lead or the request is a read; otherwise forward.
pub async fn to_leader(State(c): State<Arc<Coordinator>>, req: Request, next: Next) -> Response {
    if has_dot_segment(req.uri().path()) {
        return ApiError::BadRequest(format!("{:?} has a '.' or '..' segment", req.uri().path()))
            .into_response();
    }
    if let Some(why) = not_a_member(&c, req.uri().path()) {
        return why.into_response();
    }
    if !needs_leader(req.method(), req.uri().path()) || c.is_leader() {
        return next.run(req).await;
    }
    if c.isolated() {
        return ApiError::NoLeader(format!(
            "node {} has lost contact with a majority of the coordinators; retry another",
            c.id
        ))
        .into_response();
    }
    // A body the leader would refuse unread is refused here: the leader's early answer would
    // otherwise race the body still being forwarded and reach the client as a 503.
    let limit = if req.uri().path().starts_with("/v1/files/") {
        c.config.max_file_size
    } else {
        c.config.body_limit as u64
    };
    if declared_length(&req).is_some_and(|len| len > limit) {
        return ApiError::PayloadTooLarge(format!("the body is over the limit of {limit} bytes"))
            .into_response();
    }
    if req.headers().contains_key(FORWARDED_HEADER) {
        return ApiError::NoLeader("leadership is changing; retry".into()).into_response();
    }
    let wait = Duration::from_millis(c.config.election_max_ms * 4);
    let Some((leader_id, leader_addr)) = c.wait_for_leader(wait).await else {
        return ApiError::NoLeader("no leader elected yet; retry".into()).into_response();
    };
    if leader_id == c.id {
        return next.run(req).await;
    }
    if c.links.is_cut(leader_id) {
        return ApiError::NoLeader("the link to the leader is cut".into()).into_response();
    }
    c.metrics.forwarded.inc();
    let leader_url = c.scheme.base_url(&leader_addr);
    match proxy(&c.http, c.id, &leader_url, req, limit).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// Why this node cannot serve `/v1/…` requests, if it is no member of a group: removed from
/// one, or started with `--join` and not added yet. `GET /v1/cluster` stays open, to say so.
fn not_a_member(c: &Coordinator, path: &str) -> Option<ApiError> {
    if !path.starts_with("/v1/") || path == "/v1/cluster" {
        return None;
    }
    let members = c.members();
    let removed = c.removed.load(std::sync::atomic::Ordering::Relaxed);
    if members.contains_key(&c.id) && !removed {
        return None;
    }
    Some(ApiError::NotAMember(if members.is_empty() {
        format!(
            "node {} has not joined a coordinator group yet (add it with POST \
             /v1/cluster/members on a member); ask another coordinator",
            c.id
        )
    } else {
        let known: Vec<String> = members.values().cloned().collect();
        format!(
            "node {} is not a member of the coordinator group (it was removed); ask one of {}",
            c.id,
            known.join(", ")
        )
    }))
}

/// The request's `Content-Length`, if it gave a valid one.
fn declared_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Sends `req` to the coordinator at `base_url` (`scheme://host:port`) and streams its answer
/// back. A body that grows past `limit` bytes is cut off here and answered with 413, after
/// the rest of it was read ([`capped`]): the leader would refuse it at the same size, but its
/// early answer races the rest of the body still being sent and would reach the client as a
/// broken connection (503) instead.
pub async fn proxy(
    http: &reqwest::Client,
    from: u64,
    base_url: &str,
    req: Request,
    limit: u64,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{base_url}{path}");
    let mut out = http.request(parts.method.clone(), &url);
    for (name, value) in &parts.headers {
        if !HOP_HEADERS.contains(&name.as_str()) && name.as_str() != NODE_HEADER {
            out = out.header(name, value);
        }
    }
    out = out
        .header(FORWARDED_HEADER, "1")
        .header(NODE_HEADER, from.to_string());
    // Past the limit the body ends with an error (the forward is abandoned) once the rest
    // of it was read, so the client gets this node's 413 rather than a broken connection.
    let over = Arc::new(AtomicBool::new(false));
    let flag = over.clone();
    let stream = capped(body, limit).inspect_err(move |e| {
        if matches!(e, CapError::TooLarge(_)) {
            flag.store(true, Ordering::SeqCst);
        }
    });
    let sent = out.body(reqwest::Body::wrap_stream(stream)).send().await;
    if over.load(Ordering::SeqCst) {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body is over the limit of {limit} bytes"
        )));
    }
    let resp = sent
        .map_err(|e| ApiError::Unavailable(format!("leader at {base_url} did not answer: {e}")))?;
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if !HOP_HEADERS.contains(&name.as_str()) {
            if let Ok(name) = HeaderName::from_bytes(name.as_str().as_bytes()) {
                builder = builder.header(name, value.as_bytes());
            }
        }
    }
    let body = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
    builder
        .body(body)
        .map_err(|e| ApiError::Internal(format!("bad forwarded answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_spotted_even_encoded() {
        assert!(has_dot_segment("/v1/files/../x"));
        assert!(has_dot_segment("/v1/files/a/%2E%2e/x"));
        assert!(has_dot_segment("/v1/files/a/."));
        assert!(!has_dot_segment("/v1/files/a.b/..c/x..y"));
    }

    #[test]
    fn writes_and_worker_calls_go_to_the_leader() {
        assert!(needs_leader(&Method::POST, "/v1/jobs"));
        assert!(needs_leader(&Method::DELETE, "/v1/jobs/3"));
        assert!(!needs_leader(&Method::GET, "/v1/workers"));
        assert!(!needs_leader(&Method::GET, "/v1/models/lite0"));
        assert!(!needs_leader(&Method::POST, "/v1/workers/w1/heartbeat"));
        assert!(needs_leader(&Method::POST, "/v1/workers/w1/lease"));
        assert!(needs_leader(&Method::POST, "/v1/workers/a/b/heartbeat"));
        assert!(!needs_leader(&Method::GET, "/v1/jobs"));
        assert!(!needs_leader(&Method::POST, "/raft/vote"));
        assert!(!needs_leader(&Method::GET, "/healthz"));
    }
}
