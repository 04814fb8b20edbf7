//! Helpers shared by the storage node's integration tests: nodes started in-process on port 0
//! over real sled folders, an HTTP client, and reproducible random content.

#![allow(dead_code)]

use std::path::Path;

use idunno_sdfs::{NodeConfig, NodeHandle};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;

/// Starts a node on a free port with its data in `data`, after `configure` adjusts defaults.
pub async fn start_node(
    id: &str,
    data: &Path,
    configure: impl FnOnce(&mut NodeConfig),
) -> NodeHandle {
    let mut config = NodeConfig::new(id, data);
    configure(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    idunno_sdfs::start(config, listener).await.unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

pub fn url(addr: &str, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// `n` reproducible random bytes.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; n];
    rng.fill(&mut out[..]);
    out
}

pub fn hash_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// `PUT /internal/blobs`, the body sent in pieces of `piece` bytes. Returns status and JSON.
pub async fn put_blob(
    client: &reqwest::Client,
    addr: &str,
    data: &[u8],
    expect: Option<&str>,
) -> (StatusCode, Value) {
    let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .chunks(100_003)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let mut req = client
        .put(url(addr, "/internal/blobs"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)));
    if let Some(h) = expect {
        req = req.header("x-idunno-expect-hash", h);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, json_body(resp).await)
}

/// Reads a JSON body (asserting it is JSON).
pub async fn json_body(resp: reqwest::Response) -> Value {
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.bytes().await.unwrap();
    if bytes.is_empty() {
        return Value::Null;
    }
    assert_eq!(ct.as_deref(), Some("application/json"), "body: {bytes:?}");
    serde_json::from_slice(&bytes).unwrap()
}

/// Asserts an error answer: `status`, JSON `{error, code}` with this code.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let body = json_body(resp).await;
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    body
}

/// `GET /internal/blobs/{hash}` fully read.
pub async fn get_blob(
    client: &reqwest::Client,
    addr: &str,
    hash: &str,
) -> reqwest::Result<Vec<u8>> {
    let resp = client
        .get(url(addr, &format!("/internal/blobs/{hash}")))
        .send()
        .await?
        .error_for_status()?;
    Ok(resp.bytes().await?.to_vec())
}
