//! Calls from a coordinator to a storage node's internal routes (`/internal/blobs…`), with
//! the cluster secret: write, read, copy, list and delete blobs.

use std::time::Duration;

use idunno_api::client::base_url;
use idunno_api::file::{BlobInfo, FetchBlob, StoredBlob};

use crate::auth::SECRET_HEADER;

/// Header a blob writer may send: the node refuses the blob if its hash differs.
pub const EXPECT_HASH_HEADER: &str = "x-idunno-expect-hash";

/// A failed call to a storage node.
#[derive(Debug, thiserror::Error)]
#[error("storage node {addr}: {reason}")]
pub struct NodeError {
    pub addr: String,
    pub reason: String,
}

/// A client for storage nodes sharing one connection pool.
#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    secret: Option<String>,
}

impl NodeClient {
    pub fn new(http: reqwest::Client, secret: Option<String>) -> NodeClient {
        NodeClient { http, secret }
    }

    /// A request to `addr` + `path` with the cluster secret.
    pub fn request(
        &self,
        method: reqwest::Method,
        addr: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", base_url(addr)));
        match &self.secret {
            Some(s) => req.header(SECRET_HEADER, s),
            None => req,
        }
    }

    fn err(addr: &str, reason: impl ToString) -> NodeError {
        NodeError {
            addr: addr.to_string(),
            reason: reason.to_string(),
        }
    }

    async fn check(addr: &str, resp: reqwest::Response) -> Result<reqwest::Response, NodeError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(Self::err(addr, format!("{status}: {body}")))
    }

    /// Streams `body` into a new blob on `addr`.
    pub async fn put_blob(&self, addr: &str, body: reqwest::Body) -> Result<StoredBlob, NodeError> {
        let resp = self
            .request(reqwest::Method::PUT, addr, "/internal/blobs")
            .body(body)
            .send()
            .await
            .map_err(|e| Self::err(addr, e))?;
        Self::check(addr, resp)
            .await?
            .json()
            .await
            .map_err(|e| Self::err(addr, e))
    }

    /// Has `target` copy blob `hash` from the node at `from`.
    pub async fn fetch_blob(
        &self,
        target: &str,
        hash: &str,
        from: &str,
    ) -> Result<StoredBlob, NodeError> {
        let resp = self
            .request(
                reqwest::Method::POST,
                target,
                &format!("/internal/blobs/{hash}/fetch"),
            )
            .json(&FetchBlob {
                from: from.to_string(),
            })
            .send()
            .await
            .map_err(|e| Self::err(target, e))?;
        Self::check(target, resp)
            .await?
            .json()
            .await
            .map_err(|e| Self::err(target, e))
    }

    /// The blobs a node holds.
    pub async fn list_blobs(&self, addr: &str) -> Result<Vec<BlobInfo>, NodeError> {
        let resp = self
            .request(reqwest::Method::GET, addr, "/internal/blobs")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| Self::err(addr, e))?;
        Self::check(addr, resp)
            .await?
            .json()
            .await
            .map_err(|e| Self::err(addr, e))
    }

    /// Deletes a blob from a node; a blob already gone is fine.
    pub async fn delete_blob(&self, addr: &str, hash: &str) -> Result<(), NodeError> {
        let resp = self
            .request(
                reqwest::Method::DELETE,
                addr,
                &format!("/internal/blobs/{hash}"),
            )
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| Self::err(addr, e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        Self::check(addr, resp).await.map(|_| ())
    }
}
