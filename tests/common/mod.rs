//! Helpers shared by the system tests: an embedded cluster in a temp folder, raw HTTP calls,
//! reproducible pseudo-random content, and polling with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use idunno::embedded::{ClusterSpec, EmbeddedCluster};
use idunno_coordinator::CoordinatorConfig;
use reqwest::StatusCode;
use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(30);

/// Logs to stderr when `IDUNNO_TEST_LOG` is set (an env filter such as
/// `idunno_worker=debug`), for looking into a failing test.
pub fn init_log() {
    if let Ok(filter) = std::env::var("IDUNNO_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Starts a cluster under a fresh temp folder (returned, to keep it alive).
pub async fn cluster(
    coordinators: u64,
    storage_nodes: usize,
    workers: usize,
    tweak: impl Fn(&mut CoordinatorConfig),
) -> (EmbeddedCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        coordinators,
        storage_nodes,
        workers,
        listen: None,
    };
    let cluster = EmbeddedCluster::start(dir.path(), &spec, tweak)
        .await
        .unwrap();
    (cluster, dir)
}

/// `len` bytes that depend only on `seed`.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A raw request with optional headers and body; the status and the body bytes.
pub async fn http(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (StatusCode, Vec<u8>) {
    let mut req = reqwest::Client::new().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}

pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(bytes)))
}

/// Polls `check` until it returns `Some`, or panics with `what` after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `method path` with `body` over a plain TCP connection, exactly as written (no URL
/// normalisation, unlike an HTTP client), and returns the status and body.
pub async fn raw_request(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (and close) before taking the whole body, as for one too large.
    let _ = stream.write_all(body).await;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body_at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |p| p + 4);
    (status, out[body_at..].to_vec())
}
