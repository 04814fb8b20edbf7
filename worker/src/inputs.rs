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
            // The node's own `{"error": …}` says more than the status (e.g. a corrupt blob).
            let said = response
                .json::<idunno_api::ErrorBody>()
                .await
                .map(|b| format!(": {}", b.error))
                .unwrap_or_default();
            return Err(fail(format!("answered {status}{said}")));
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
    //! Against real storage nodes (`idunno_sdfs::start`, each on 127.0.0.1:0 with its own data
    //! folder, no coordinators): blobs go in through `PUT /internal/blobs`, bit rot comes from
    //! `idunno_sdfs::corrupt_byte_for_tests` on a stopped node that is then restarted.

    use idunno_sdfs::{NodeConfig, NodeHandle};
    use tokio::net::TcpListener;

    use super::*;

    /// A real storage node that can be stopped and started again on its address and folder.
    struct StorageNode {
        config: NodeConfig,
        handle: Option<NodeHandle>,
        _dir: tempfile::TempDir,
    }

    impl StorageNode {
        async fn start(secret: Option<&str>) -> StorageNode {
            let dir = tempfile::tempdir().unwrap();
            let mut config = NodeConfig::new("s1", dir.path().join("data"));
            config.cluster_secret = secret.map(str::to_string);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            config.listen = listener.local_addr().unwrap().to_string();
            let handle = idunno_sdfs::start(config.clone(), listener).await.unwrap();
            StorageNode {
                config,
                handle: Some(handle),
                _dir: dir,
            }
        }

        fn addr(&self) -> String {
            self.config.listen.clone()
        }

        /// Stores `bytes` through the node's blob route; returns their hash.
        async fn put(&self, bytes: &[u8]) -> String {
            let hash = blake3::hash(bytes).to_hex().to_string();
            let mut request = reqwest::Client::new()
                .put(format!("http://{}/internal/blobs", self.addr()))
                .header(idunno_sdfs::EXPECT_HASH_HEADER, &hash)
                .body(bytes.to_vec());
            if let Some(secret) = &self.config.cluster_secret {
                request = request.header(idunno_sdfs::SECRET_HEADER, secret);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), reqwest::StatusCode::CREATED);
            hash
        }

        /// Flips the byte at `offset` of each blob on disk (the chunk checksums stay as
        /// they were), with the node stopped, then starts it again on the same address.
        async fn rot(&mut self, blobs: &[(&str, u64)]) {
            self.handle.take().unwrap().shutdown().await.unwrap();
            for (hash, offset) in blobs {
                idunno_sdfs::corrupt_byte_for_tests(&self.config.data, hash, *offset).unwrap();
            }
            let listener = TcpListener::bind(&self.config.listen).await.unwrap();
            self.handle = Some(
                idunno_sdfs::start(self.config.clone(), listener)
                    .await
                    .unwrap(),
            );
        }
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

    fn sample(name: &str) -> Vec<u8> {
        let path = format!("{}/../samples/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn png() -> Vec<u8> {
        sample("coffee.png")
    }

    /// `len` bytes that depend only on `seed`.
    fn content(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// A port nothing listens on.
    const DEAD: &str = "127.0.0.1:1";

    #[tokio::test]
    async fn a_rotten_replica_is_an_error_and_the_next_replica_serves() {
        let (a, b) = (png(), sample("chelsea.png"));
        let mut bad = StorageNode::start(None).await;
        let good = StorageNode::start(None).await;
        let (hash_a, hash_b) = (bad.put(&a).await, bad.put(&b).await);
        good.put(&b).await;
        // Inside the first chunk: the node finds the rot before it answers.
        bad.rot(&[(&hash_a, 100), (&hash_b, 100)]).await;
        let fetcher = InputFetcher::new(reqwest::Client::new(), None);

        // The rotten replica alone: an input error naming it, no bytes.
        let err = fetcher
            .fetch(&input(&a, vec![bad.addr()]))
            .await
            .unwrap_err();
        assert!(matches!(err, WorkerError::Input { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&bad.addr()) && text.contains("500"), "{text}");

        // Rotten first, a dead node second, a good one last: the good bytes come back.
        let all = input(&b, vec![bad.addr(), DEAD.into(), good.addr()]);
        let bytes = fetcher.fetch(&all).await.unwrap();
        assert_eq!(&bytes[..], &b[..]);
        assert!(decode(&bytes).is_ok());
    }

    #[tokio::test]
    async fn a_replica_that_breaks_off_mid_blob_is_not_trusted() {
        // 5 MiB blobs rotten at 4 MiB: the node has answered 200 and sent megabytes before
        // it reaches the bad chunk and cuts the stream.
        let (x, y) = (content(1, 5 << 20), content(2, 5 << 20));
        let mut bad = StorageNode::start(None).await;
        let good = StorageNode::start(None).await;
        let (hash_x, hash_y) = (bad.put(&x).await, bad.put(&y).await);
        good.put(&y).await;
        bad.rot(&[(&hash_x, 4 << 20), (&hash_y, 4 << 20)]).await;
        let fetcher = InputFetcher::new(reqwest::Client::new(), None);

        // Alone, the cut-off replica is an error, not a short blob.
        let err = fetcher
            .fetch(&input(&x, vec![bad.addr()]))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, WorkerError::Input { .. }), "{text}");
        assert!(!text.contains("answered"), "not refused up front: {text}");

        // With a good replica after it, the whole blob comes back; also when the lease gives
        // no size (the worker's own limit applies then).
        let mut both = input(&y, vec![bad.addr(), good.addr()]);
        assert!(fetcher.fetch(&both).await.unwrap() == y);
        both.size = 0;
        assert!(fetcher.fetch(&both).await.unwrap() == y);
    }

    #[tokio::test]
    async fn the_cluster_secret_is_sent() {
        let good = png();
        let node = StorageNode::start(Some("s3cret")).await;
        node.put(&good).await;
        let without = InputFetcher::new(reqwest::Client::new(), None);
        let wrong = InputFetcher::new(reqwest::Client::new(), Some("guess".into()));
        let with = InputFetcher::new(reqwest::Client::new(), Some("s3cret".into()));
        let i = input(&good, vec![node.addr()]);
        for fetcher in [without, wrong] {
            let err = fetcher.fetch(&i).await.unwrap_err();
            assert!(err.to_string().contains("403"), "{err}");
        }
        assert_eq!(&with.fetch(&i).await.unwrap()[..], &good[..]);
    }

    #[tokio::test]
    async fn missing_files_and_oversized_blobs_are_input_errors() {
        let fetcher = InputFetcher::new(reqwest::Client::new(), None);
        let mut missing = input(b"x", vec![DEAD.into()]);
        missing.hash = None;
        let err = fetcher.fetch(&missing).await.unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");

        let no_replica = input(b"x", vec![]);
        let err = fetcher.fetch(&no_replica).await.unwrap_err();
        assert!(err.to_string().contains("no live storage node"), "{err}");

        let node = StorageNode::start(None).await;
        let big = vec![7u8; 1000];
        node.put(&big).await;
        let mut lying = input(&big, vec![node.addr()]);
        lying.size = 10;
        let err = fetcher.fetch(&lying).await.unwrap_err();
        assert!(err.to_string().contains("larger than 10"), "{err}");

        // A node that does not hold the blob says so; the worker passes that on.
        let absent = input(b"never stored", vec![node.addr()]);
        let err = fetcher.fetch(&absent).await.unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
    }

    #[tokio::test]
    async fn a_batch_is_fetched_in_input_order() {
        let a = png();
        let b = b"plain text, not an image".to_vec();
        let node = StorageNode::start(None).await;
        node.put(&a).await;
        node.put(&b).await;
        let fetcher = InputFetcher::new(reqwest::Client::new(), None);
        let missing = input(b"not on the node", vec![node.addr()]);
        let inputs = vec![
            input(&b, vec![node.addr()]),
            missing,
            input(&a, vec![node.addr()]),
        ];
        let got = fetcher.fetch_all(&inputs).await;
        assert_eq!(got.len(), 3);
        assert_eq!(&got[0].as_ref().unwrap()[..], &b[..]);
        assert!(got[1].is_err(), "one unreadable input fails alone");
        assert_eq!(&got[2].as_ref().unwrap()[..], &a[..]);
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
