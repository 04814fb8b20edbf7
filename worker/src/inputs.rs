//! A batch's inputs: their bytes read straight from storage nodes, hash-verified, and decoded
//! into images.
//!
//! The lease names each input's BLAKE3 hash and the storage nodes holding it, best first. A
//! replica that cannot be reached, answers an error, or serves bytes with another hash is
//! skipped for the next one; an input no replica could serve, or that does not decode, is a
//! per-query error, never a batch failure. This module does not talk to the coordinators.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use idunno_api::worker::LeasedInput;
use image::DynamicImage;

use crate::error::WorkerError;

/// Header carrying the cluster secret on storage nodes' internal routes.
pub const SECRET_HEADER: &str = "x-idunno-secret";

/// Largest input read when the lease gives no size (an image, not a data set).
pub const MAX_INPUT_BYTES: u64 = 256 << 20;

/// Inputs of one batch fetched at the same time.
const PARALLEL_FETCHES: usize = 8;

/// Longest one replica may take to serve one input.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads input blobs from storage nodes.
#[derive(Clone)]
pub struct InputFetcher {
    /// Shared connection pool (the coordinators' client's).
    http: reqwest::Client,
    /// Sent as [`SECRET_HEADER`] when the cluster has one.
    secret: Option<String>,
}

impl InputFetcher {
    pub fn new(http: reqwest::Client, secret: Option<String>) -> InputFetcher {
        InputFetcher { http, secret }
    }

    /// The verified bytes of one input, from the first replica that serves them correctly.
    pub async fn fetch(&self, input: &LeasedInput) -> Result<Bytes, WorkerError> {
        let fail = |reason: String| WorkerError::Input {
            name: input.name.clone(),
            reason,
        };
        let Some(hash) = input.hash.as_deref() else {
            return Err(fail("no such file in SDFS".into()));
        };
        if input.replicas.is_empty() {
            return Err(fail("no live storage node holds it".into()));
        }
        let limit = if input.size > 0 {
            input.size
        } else {
            MAX_INPUT_BYTES
        };
        let mut reasons = Vec::new();
        for replica in &input.replicas {
            match self.fetch_from(replica, hash, limit).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    tracing::warn!(input = %input.name, %replica, error = %e, "replica failed; trying the next");
                    reasons.push(e.to_string());
                }
            }
        }
        Err(fail(format!(
            "no replica could serve it: {}",
            reasons.join("; ")
        )))
    }

    /// All inputs of a batch, in input order, a few at a time.
    pub async fn fetch_all(&self, inputs: &[LeasedInput]) -> Vec<Result<Bytes, WorkerError>> {
        // Owned futures: borrowing closures here make the caller's future not `Send`.
        futures::stream::iter(inputs.to_vec())
            .map(|input| {
                let fetcher = self.clone();
                async move { fetcher.fetch(&input).await }
            })
            .buffered(PARALLEL_FETCHES)
            .collect()
            .await
    }

    /// `GET http://{replica}/internal/blobs/{hash}`, at most `limit` bytes, BLAKE3-checked.
    async fn fetch_from(
        &self,
        replica: &str,
        hash: &str,
        limit: u64,
    ) -> Result<Bytes, WorkerError> {
        let fail = |reason: String| WorkerError::Replica {
            replica: replica.to_string(),
            reason,
        };
        let url = format!(
            "{}/internal/blobs/{hash}",
            idunno_api::client::base_url(replica)
        );
        let mut request = self.http.get(&url).timeout(REPLICA_TIMEOUT);
        if let Some(secret) = &self.secret {
            request = request.header(SECRET_HEADER, secret);
        }
        let response = request.send().await.map_err(|e| fail(describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("answered {status}")));
        }
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(fail(format!("blob is larger than {limit} bytes")));
        }
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| fail(describe(&e)))?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(fail(format!("blob is larger than {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let body = body.freeze();
        verify_hash(&body, hash, &url)?;
        Ok(body)
    }
}

/// Checks that `bytes` hash (BLAKE3) to the hex digest `expected`.
pub fn verify_hash(bytes: &[u8], expected: &str, what: &str) -> Result<(), WorkerError> {
    let actual = blake3::hash(bytes).to_hex();
    if actual.as_str().eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(WorkerError::HashMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// Decodes an image in any format the `image` crate reads (JPEG, PNG, GIF, BMP, WebP, TIFF),
/// guessing the format from the bytes. The error says why, for the query's result.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, String> {
    if bytes.is_empty() {
        return Err("cannot decode an empty file as an image".into());
    }
    image::load_from_memory(bytes).map_err(|e| format!("cannot decode as an image: {e}"))
}

/// A reqwest error without the URL (the caller names the replica).
fn describe(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused or unreachable".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        let mut s = e.to_string();
        if let Some(url) = e.url() {
            s = s.replace(&format!(" ({url})"), "");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    //! Against a stand-in storage node (an axum server on 127.0.0.1:0) serving blobs by hash,
    //! until the real storage node exists; see `worker/tests/worker_stub_cluster.rs`.

    use std::collections::HashMap;
    use std::sync::Arc;

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    use axum::Router;

    use super::*;

    /// A storage node stand-in: serves `blobs[hash]`, optionally checking the secret.
    async fn stub_storage_node(
        blobs: HashMap<String, Vec<u8>>,
        secret: Option<&'static str>,
    ) -> String {
        type Blobs = Arc<HashMap<String, Vec<u8>>>;
        async fn blob(
            State((blobs, secret)): State<(Blobs, Option<&'static str>)>,
            headers: HeaderMap,
            Path(hash): Path<String>,
        ) -> Result<Vec<u8>, StatusCode> {
            if let Some(s) = secret {
                if headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok()) != Some(s) {
                    return Err(StatusCode::FORBIDDEN);
                }
            }
            blobs.get(&hash).cloned().ok_or(StatusCode::NOT_FOUND)
        }
        let app = Router::new()
            .route("/internal/blobs/{hash}", get(blob))
            .with_state((Arc::new(blobs), secret));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn input(bytes: &[u8], replicas: Vec<String>) -> LeasedInput {
        LeasedInput {
            index: 0,
            name: "images/x.png".into(),
            hash: Some(blake3::hash(bytes).to_hex().to_string()),
            size: bytes.len() as u64,
            replicas,
        }
    }

    fn png() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../samples/coffee.png");
        std::fs::read(path).unwrap()
    }

    #[tokio::test]
    async fn wrong_bytes_are_rejected_and_the_next_replica_serves() {
        let good = png();
        let hash = blake3::hash(&good).to_hex().to_string();
        let mut corrupt = good.clone();
        corrupt[100] ^= 0xff;
        let bad_node = stub_storage_node(HashMap::from([(hash.clone(), corrupt)]), None).await;
        let good_node =
            stub_storage_node(HashMap::from([(hash.clone(), good.clone())]), None).await;
        let fetcher = InputFetcher::new(reqwest::Client::new(), None);

        // The corrupt replica alone: a hash mismatch, reported as an input error.
        let only_bad = input(&good, vec![bad_node.clone()]);
        let err = fetcher.fetch(&only_bad).await.unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");

        // Corrupt first, a dead node second, the good one last: the good bytes come back.
        let dead = "127.0.0.1:1".to_string();
        let all = input(&good, vec![bad_node, dead, good_node]);
        let bytes = fetcher.fetch(&all).await.unwrap();
        assert_eq!(&bytes[..], &good[..]);
        assert!(decode(&bytes).is_ok());
    }

    #[tokio::test]
    async fn the_cluster_secret_is_sent() {
        let good = png();
        let hash = blake3::hash(&good).to_hex().to_string();
        let node = stub_storage_node(HashMap::from([(hash, good.clone())]), Some("s3cret")).await;
        let without = InputFetcher::new(reqwest::Client::new(), None);
        let with = InputFetcher::new(reqwest::Client::new(), Some("s3cret".into()));
        let i = input(&good, vec![node]);
        let err = without.fetch(&i).await.unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
        assert_eq!(&with.fetch(&i).await.unwrap()[..], &good[..]);
    }

    #[tokio::test]
    async fn missing_files_and_oversized_blobs_are_input_errors() {
        let fetcher = InputFetcher::new(reqwest::Client::new(), None);
        let mut missing = input(b"x", vec!["127.0.0.1:1".into()]);
        missing.hash = None;
        let err = fetcher.fetch(&missing).await.unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");

        let no_replica = input(b"x", vec![]);
        assert!(fetcher.fetch(&no_replica).await.is_err());

        let big = vec![7u8; 1000];
        let hash = blake3::hash(&big).to_hex().to_string();
        let node = stub_storage_node(HashMap::from([(hash, big.clone())]), None).await;
        let mut lying = input(&big, vec![node]);
        lying.size = 10;
        let err = fetcher.fetch(&lying).await.unwrap_err();
        assert!(err.to_string().contains("larger than 10"), "{err}");
    }

    #[tokio::test]
    async fn a_batch_is_fetched_in_input_order() {
        let a = png();
        let b = b"plain text, not an image".to_vec();
        let node = stub_storage_node(
            HashMap::from([
                (blake3::hash(&a).to_hex().to_string(), a.clone()),
                (blake3::hash(&b).to_hex().to_string(), b.clone()),
            ]),
            None,
        )
        .await;
        let fetcher = InputFetcher::new(reqwest::Client::new(), None);
        let inputs = vec![input(&b, vec![node.clone()]), input(&a, vec![node])];
        let got = fetcher.fetch_all(&inputs).await;
        assert_eq!(&got[0].as_ref().unwrap()[..], &b[..]);
        assert_eq!(&got[1].as_ref().unwrap()[..], &a[..]);
    }

    #[test]
    fn undecodable_bytes_give_a_reason() {
        assert!(decode(b"").unwrap_err().contains("empty"));
        assert!(decode(b"GIF89a but truncated")
            .unwrap_err()
            .contains("cannot decode"));
        assert!(decode(&png()).is_ok());
    }

    #[test]
    fn hashes_compare_case_insensitively() {
        let h = blake3::hash(b"abc").to_hex().to_string();
        assert!(verify_hash(b"abc", &h.to_uppercase(), "x").is_ok());
        assert!(matches!(
            verify_hash(b"abd", &h, "x"),
            Err(WorkerError::HashMismatch { .. })
        ));
    }
}
