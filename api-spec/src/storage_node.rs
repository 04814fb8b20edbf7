//! The one client of a storage node's internal routes (`/internal/blobs…`), with the cluster
//! secret: write, read, copy, list and delete blobs. Coordinators use all of it, workers read
//! their inputs with it, storage nodes read the blob they copy from another node with it.
//! Every call that waits on a node is bounded by the client's progress timeout, so a hung
//! node costs a caller at most that long.

use std::time::Duration;

use crate::client::describe_error;
use crate::file::{BlobInfo, FetchBlob, StoredBlob};
use crate::headers::{SECRET_HEADER, STAMP_HEADER};
use crate::transport::Scheme;
use crate::ErrorBody;

/// Progress timeout of a client built without one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The slowest copy rate assumed when bounding a node-to-node copy by the blob's size.
const MIN_COPY_BYTES_PER_SEC: u64 = 16 << 20;

/// A failed call to a storage node.
#[derive(Debug, thiserror::Error)]
#[error("storage node {addr}: {reason}")]
pub struct NodeError {
    pub addr: String,
    pub reason: String,
    /// The node's answer, if it gave one.
    pub status: Option<u16>,
}

impl NodeError {
    /// The node itself answered that another node it was reading from failed (a copy's
    /// source), rather than failing itself.
    pub fn upstream(&self) -> bool {
        self.status == Some(502)
    }
}

/// What a conditional delete did on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// Deleted, or already gone.
    Gone,
    /// Stored again since the stamp was read: kept.
    Kept,
}

/// A client for storage nodes sharing one connection pool.
#[derive(Clone)]
pub struct StorageNodeClient {
    http: reqwest::Client,
    /// The scheme of nodes' bare `host:port` addresses.
    scheme: Scheme,
    secret: Option<String>,
    timeout: Duration,
}

impl StorageNodeClient {
    /// A client over `http`'s pool, reaching nodes with `scheme` and sending `secret` when
    /// the cluster has one.
    pub fn new(http: reqwest::Client, scheme: Scheme, secret: Option<String>) -> StorageNodeClient {
        StorageNodeClient {
            http,
            scheme,
            secret,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another progress timeout.
    pub fn with_timeout(&self, timeout: Duration) -> StorageNodeClient {
        StorageNodeClient {
            timeout,
            ..self.clone()
        }
    }

    /// How long a node may make no progress on a call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A request to `addr` + `path` with the cluster secret (and no timeout: streaming callers
    /// bound each step themselves).
    pub fn request(
        &self,
        method: reqwest::Method,
        addr: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.scheme.base_url(addr)));
        match &self.secret {
            Some(s) => req.header(SECRET_HEADER, s),
            None => req,
        }
    }

    fn err(addr: &str, reason: impl ToString) -> NodeError {
        NodeError {
            addr: addr.to_string(),
            reason: reason.to_string(),
            status: None,
        }
    }

    fn unreachable(addr: &str, e: reqwest::Error) -> NodeError {
        Self::err(addr, describe_error(&e))
    }

    /// Sends `req` to `addr`; an error names the node and why it could not be reached.
    async fn send(
        addr: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, NodeError> {
        req.send().await.map_err(|e| Self::unreachable(addr, e))
    }

    /// Sends `req` to `addr` and reads a successful answer's JSON body.
    async fn send_json<T: serde::de::DeserializeOwned>(
        addr: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, NodeError> {
        let resp = Self::check(addr, Self::send(addr, req).await?).await?;
        resp.json().await.map_err(|e| Self::err(addr, e))
    }

    /// The answer if it is a success; else an error with the node's own `{"error": …}`.
    async fn check(addr: &str, resp: reqwest::Response) -> Result<reqwest::Response, NodeError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let said = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(NodeError {
            status: Some(status.as_u16()),
            ..Self::err(addr, format!("answered {status}: {said}"))
        })
    }

    /// Starts reading blob `hash` from `addr` (the whole blob; its bytes stream from the
    /// answer), within `timeout` for the whole read.
    pub async fn get_blob(
        &self,
        addr: &str,
        hash: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, NodeError> {
        let req = self
            .request(
                reqwest::Method::GET,
                addr,
                &format!("/internal/blobs/{hash}"),
            )
            .timeout(timeout);
        Self::check(addr, Self::send(addr, req).await?).await
    }

    /// Streams `body` into a new blob on `addr`. Unbounded in time (the body's length is not
    /// known): the caller times each piece and the answer.
    pub async fn put_blob(&self, addr: &str, body: reqwest::Body) -> Result<StoredBlob, NodeError> {
        let req = self
            .request(reqwest::Method::PUT, addr, "/internal/blobs")
            .body(body);
        Self::send_json(addr, req).await
    }

    /// Has `target` copy blob `hash` (of `size` bytes) from the node at `from`; bounded by
    /// the progress timeout plus the time the copy takes at a slow rate.
    pub async fn fetch_blob(
        &self,
        target: &str,
        hash: &str,
        from: &str,
        size: u64,
    ) -> Result<StoredBlob, NodeError> {
        let limit = self.timeout + Duration::from_secs(size / MIN_COPY_BYTES_PER_SEC);
        let req = self
            .request(
                reqwest::Method::POST,
                target,
                &format!("/internal/blobs/{hash}/fetch"),
            )
            .timeout(limit)
            .json(&FetchBlob {
                from: from.to_string(),
            });
        Self::send_json(target, req).await
    }

    /// The blobs a node holds.
    pub async fn list_blobs(&self, addr: &str) -> Result<Vec<BlobInfo>, NodeError> {
        let req = self
            .request(reqwest::Method::GET, addr, "/internal/blobs")
            .timeout(self.timeout);
        Self::send_json(addr, req).await
    }

    /// The stamp of a blob on a node (`None`: the node does not hold it).
    pub async fn blob_stamp(&self, addr: &str, hash: &str) -> Result<Option<u64>, NodeError> {
        let req = self
            .request(
                reqwest::Method::HEAD,
                addr,
                &format!("/internal/blobs/{hash}"),
            )
            .timeout(self.timeout);
        let resp = Self::send(addr, req).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = Self::check(addr, resp).await?;
        resp.headers()
            .get(STAMP_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| Self::err(addr, "the answer has no blob stamp"))
    }

    /// Deletes a blob from a node if it still has `stamp` (any copy, without one); a blob
    /// already gone is fine.
    pub async fn delete_blob(
        &self,
        addr: &str,
        hash: &str,
        stamp: Option<u64>,
    ) -> Result<Deletion, NodeError> {
        let mut path = format!("/internal/blobs/{hash}");
        if let Some(stamp) = stamp {
            path.push_str(&format!("?stamp={stamp}"));
        }
        let req = self
            .request(reqwest::Method::DELETE, addr, &path)
            .timeout(self.timeout);
        let resp = Self::send(addr, req).await?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(Deletion::Gone),
            reqwest::StatusCode::PRECONDITION_FAILED => Ok(Deletion::Kept),
            _ => Self::check(addr, resp).await.map(|_| Deletion::Gone),
        }
    }
}
