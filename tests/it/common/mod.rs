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

/// The test binary's cores, shared by its tests (they run in parallel): every test that runs
/// a cluster holds a share, and a test that measures rates ([`cpu_alone`]) holds them all, so
/// that busy neighbours do not skew what it measures.
static CPU: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A share of the cores, for as long as it is held.
pub async fn cpu_shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CPU.read().await
}

/// A share of the cores, for a test that runs outside a runtime.
pub fn cpu_shared_blocking() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CPU.blocking_read()
}

/// The cores alone, for as long as it is held (waits for the tests running now).
pub async fn cpu_alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    CPU.write().await
}

/// A test's temp folder, holding the test's share of the cores too ([`cpu_shared`]).
pub struct TestDir {
    dir: tempfile::TempDir,
    _cpu: tokio::sync::RwLockReadGuard<'static, ()>,
}

impl std::ops::Deref for TestDir {
    type Target = tempfile::TempDir;
    fn deref(&self) -> &tempfile::TempDir {
        &self.dir
    }
}

/// Starts a cluster under a fresh temp folder (returned, to keep it alive; it holds the
/// test's share of the cores).
pub async fn cluster(
    coordinators: u64,
    storage_nodes: usize,
    workers: usize,
    tweak: impl Fn(&mut CoordinatorConfig),
) -> (EmbeddedCluster, TestDir) {
    let cpu = cpu_shared().await;
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
    (cluster, TestDir { dir, _cpu: cpu })
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
    http_via(&reqwest::Client::new(), method, url, headers, body).await
}

/// [`http`] through `client` (one that trusts a TLS cluster's CA, say).
pub async fn http_via(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (StatusCode, Vec<u8>) {
    let mut req = client.request(method.clone(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await.unwrap().to_vec();
    check_contract(&method, url, status, content_type.as_deref(), &body);
    (status, body)
}

/// `api-spec/openapi.yaml`, loaded once.
static SPEC: std::sync::LazyLock<idunno_api::contract::Spec> =
    std::sync::LazyLock::new(idunno_api::contract::Spec::load);

/// Every raw answer a system test gets from a route the spec documents must keep the
/// contract: a documented status, and a JSON body of the documented schema.
fn check_contract(
    method: &reqwest::Method,
    url: &str,
    status: StatusCode,
    content_type: Option<&str>,
    body: &[u8],
) {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return;
    };
    if let Err(e) = SPEC.check(
        method.as_str(),
        parsed.path(),
        status.as_u16(),
        content_type,
        body,
    ) {
        panic!("{method} {url}: the answer breaks api-spec/openapi.yaml: {e}");
    }
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

/// An 8 × 8 PNG (decoding costs next to nothing, so a query costs what its model declares).
pub fn tiny_png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([seed, (x * 30) as u8, (y * 30) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Puts `bytes` as SDFS file `name` through the coordinator at `addr`.
pub async fn put_file(addr: &str, name: &str, bytes: Vec<u8>) {
    put_file_via(
        &reqwest::Client::new(),
        &format!("http://{addr}"),
        &[],
        name,
        bytes,
    )
    .await;
}

/// [`put_file`] through `http` to the coordinator at `base_url`, with `headers`.
pub async fn put_file_via(
    http: &reqwest::Client,
    base_url: &str,
    headers: &[(&str, &str)],
    name: &str,
    bytes: Vec<u8>,
) {
    let url = format!("{base_url}/v1/files/{name}");
    let (code, body) = http_via(http, reqwest::Method::PUT, &url, headers, Some(bytes)).await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "put {name}: {}",
        String::from_utf8_lossy(&body)
    );
}

/// Puts the input `in/tiny.png` and registers synthetic models of the given costs
/// (name → CPU ms per query).
pub async fn synthetic_models(client: &idunno_api::Client, addr: &str, models: &[(&str, u32)]) {
    synthetic_models_via(
        &reqwest::Client::new(),
        client,
        &format!("http://{addr}"),
        None,
        models,
    )
    .await;
}

/// [`synthetic_models`], putting the files through `http` to `base_url` with `token`.
pub async fn synthetic_models_via(
    http: &reqwest::Client,
    client: &idunno_api::Client,
    base_url: &str,
    token: Option<&str>,
    models: &[(&str, u32)],
) {
    use idunno_models::{weights, Arch};
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    put_file_via(http, base_url, &headers, "in/tiny.png", tiny_png(7)).await;
    put_file_via(
        http,
        base_url,
        &headers,
        "models/syn.safetensors",
        weights::generate_to_bytes(Arch::Synthetic, 3).unwrap(),
    )
    .await;
    for (name, cost) in models {
        let _: Value = client
            .post(
                "/v1/models",
                &serde_json::json!({"name": name, "arch": "synthetic",
                    "weights": "models/syn.safetensors", "cost_ms": cost}),
            )
            .await
            .unwrap();
    }
}

/// Creates and starts a job of `model` over `queries` copies of `in/tiny.png`.
pub async fn synthetic_job(
    client: &idunno_api::Client,
    model: &str,
    queries: usize,
    batch: u32,
    weight: u32,
) -> idunno_api::job::Job {
    client
        .post(
            "/v1/jobs",
            &idunno_api::job::NewJob {
                name: Some(model.to_string()),
                model: model.to_string(),
                inputs: idunno_api::job::Inputs::List(vec!["in/tiny.png".to_string(); queries]),
                batch_size: batch,
                weight,
                start: true,
            },
        )
        .await
        .unwrap()
}

/// Waits (up to `limit`) for job `id` to be done; returns it.
pub async fn wait_done(
    client: &idunno_api::Client,
    id: u64,
    limit: Duration,
) -> idunno_api::job::Job {
    let started = Instant::now();
    loop {
        if let Ok(job) = client
            .get::<idunno_api::job::Job>(&format!("/v1/jobs/{id}"))
            .await
        {
            if job.state == idunno_api::job::JobState::Done {
                return job;
            }
        }
        assert!(
            started.elapsed() < limit,
            "job {id} not done after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that every query of job `id` (of `queries`) has exactly one result, without
/// error, and that the job's counters agree with its batch records and its results.
pub async fn assert_exactly_one_result_each(client: &idunno_api::Client, id: u64, queries: u64) {
    use idunno_api::job::{BatchInfo, BatchStateInfo, Job};
    use idunno_api::result::QueryResult;
    let job: Job = client.get(&format!("/v1/jobs/{id}")).await.unwrap();
    let results: Vec<QueryResult> = client.get(&format!("/v1/jobs/{id}/results")).await.unwrap();
    let indexes: Vec<u64> = results.iter().map(|r| r.index).collect();
    assert_eq!(
        indexes,
        (0..queries).collect::<Vec<u64>>(),
        "one result per query, in order"
    );
    let errors: Vec<&QueryResult> = results.iter().filter(|r| r.error.is_some()).collect();
    assert!(errors.is_empty(), "error results: {errors:?}");
    let batches: Vec<BatchInfo> = client.get(&format!("/v1/jobs/{id}/batches")).await.unwrap();
    let mut covered: u64 = 0;
    let mut done_batches = 0;
    for b in &batches {
        match b.state {
            BatchStateInfo::Done { failed, .. } => {
                covered += u64::from(b.len);
                done_batches += 1;
                assert_eq!(failed, 0, "{b:?}");
            }
            _ => panic!("a batch of a done job is not done: {b:?}"),
        }
    }
    assert_eq!(
        (
            job.done,
            job.failed,
            job.in_flight,
            job.batches_done,
            covered
        ),
        (queries, 0, 0, done_batches, queries),
        "counters: {job:?}"
    );
}
