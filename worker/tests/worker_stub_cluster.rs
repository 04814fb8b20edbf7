//! The worker role end to end against **stand-ins** for the coordinators and a storage node.
//!
//! The worker here is the real one (`idunno_worker::start`): real registration, heartbeats,
//! long-polled leases, prefetch, storage-node reads with hash checks, a real candle ResNet-18
//! (seeded weights) on the real photos in `samples/`, results written as SDFS objects,
//! completions, release and deregistration. What stands in for the cluster:
//!
//! * [`StubCoordinator`] — an axum server on 127.0.0.1:0 with the worker routes of
//!   `api-spec/openapi.yaml` over a fixed list of batches, plus `PUT/GET /v1/files/…` and
//!   `GET /v1/models/{name}` over an in-memory map. It exists because the coordinator's SDFS
//!   routes and the replica locations in leases are being written at the same time as this
//!   worker; it schedules nothing and replicates nothing. The end-to-end test against the
//!   real coordinator and storage nodes replaces it.
//! * [`StubStorageNode`] — `GET /internal/blobs/{hash}` over a map (one instance serves
//!   corrupted bytes, to exercise the fallback to the next replica).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use idunno_api::file::FileVersion;
use idunno_api::result::BatchResult;
use idunno_api::worker::{
    Completion, CompletionAck, Heartbeat, HeartbeatAck, Lease, LeaseRequest, LeasedInput, Release,
    WorkerRegistered, WorkerRegistration,
};
use idunno_worker::models::{weights, Arch};
use idunno_worker::{ModelSelection, WorkerConfig};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------
// Stand-in coordinator
// ---------------------------------------------------------------------------------------

/// What the stand-in coordinator saw and holds.
#[derive(Default)]
struct Seen {
    registrations: Vec<WorkerRegistration>,
    heartbeats: Vec<Heartbeat>,
    /// Batches still to hand out, in order.
    pending: VecDeque<Lease>,
    /// In order: `lease <batch>`, `release <batch>`, `complete <batch>`, `deregister <id>`.
    events: Vec<String>,
    completions: HashMap<String, Completion>,
    releases: Vec<Release>,
    files: HashMap<String, Vec<u8>>,
    /// Models every heartbeat answer asks the worker to load.
    load: Vec<String>,
    models: HashMap<String, idunno_api::model::Model>,
    /// Delay before serving a file (a slow weights download).
    file_delay: Duration,
}

struct StubCoordinator {
    addr: String,
    seen: Mutex<Seen>,
    work: Notify,
}

impl StubCoordinator {
    async fn start() -> Arc<StubCoordinator> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stub = Arc::new(StubCoordinator {
            addr: listener.local_addr().unwrap().to_string(),
            seen: Mutex::new(Seen::default()),
            work: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/workers/register", post(register))
            .route("/v1/workers/{id}", delete(deregister))
            .route("/v1/workers/{id}/heartbeat", post(heartbeat))
            .route("/v1/workers/{id}/lease", post(grant_lease))
            .route("/v1/workers/{id}/release", post(release))
            .route("/v1/batches/{id}/complete", post(complete))
            .route("/v1/models/{name}", get(model))
            .route("/v1/files/{*name}", get(read_file).put(write_file))
            .with_state(stub.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        stub
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    fn add_batch(&self, lease: Lease) {
        self.seen().pending.push_back(lease);
        self.work.notify_waiters();
    }

    fn register_model(&self, name: &str, weights: &str, bytes: Vec<u8>) {
        let mut seen = self.seen();
        seen.files.insert(weights.to_string(), bytes);
        seen.models.insert(
            name.to_string(),
            idunno_api::model::Model {
                name: name.to_string(),
                arch: "resnet18".into(),
                weights: weights.to_string(),
                input_size: 224,
                created_at_ms: 0,
                loaded_on: vec![],
            },
        );
    }

    fn events(&self) -> Vec<String> {
        self.seen().events.clone()
    }

    fn result(&self, name: &str) -> BatchResult {
        let bytes = self.seen().files.get(name).cloned();
        serde_json::from_slice(&bytes.unwrap_or_else(|| panic!("no results object {name}")))
            .unwrap()
    }
}

type Stub = State<Arc<StubCoordinator>>;

async fn register(
    State(s): Stub,
    Json(r): Json<WorkerRegistration>,
) -> (StatusCode, Json<WorkerRegistered>) {
    s.seen().registrations.push(r);
    (
        StatusCode::CREATED,
        Json(WorkerRegistered {
            worker_id: "w-test".into(),
            heartbeat_interval_ms: 50,
            lease_timeout_ms: 5000,
        }),
    )
}

async fn deregister(State(s): Stub, Path(id): Path<String>) -> StatusCode {
    s.seen().events.push(format!("deregister {id}"));
    StatusCode::NO_CONTENT
}

async fn heartbeat(State(s): Stub, Json(h): Json<Heartbeat>) -> Json<HeartbeatAck> {
    let mut seen = s.seen();
    seen.heartbeats.push(h);
    Json(HeartbeatAck {
        load: seen.load.clone(),
    })
}

/// Hands out the next batch, waiting up to `wait_ms` for one (204 if none came).
async fn grant_lease(State(s): Stub, Json(r): Json<LeaseRequest>) -> Response {
    let deadline = Instant::now() + Duration::from_millis(r.wait_ms.min(30_000));
    loop {
        let notified = s.work.notified();
        {
            let mut seen = s.seen();
            if let Some(lease) = seen.pending.pop_front() {
                seen.events.push(format!("lease {}", lease.batch_id));
                return Json(lease).into_response();
            }
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            return StatusCode::NO_CONTENT.into_response();
        }
    }
}

async fn release(State(s): Stub, Json(r): Json<Release>) -> StatusCode {
    let mut seen = s.seen();
    seen.events.push(format!("release {}", r.batch_id));
    seen.releases.push(r);
    StatusCode::NO_CONTENT
}

async fn complete(
    State(s): Stub,
    Path(batch): Path<String>,
    Json(c): Json<Completion>,
) -> Json<CompletionAck> {
    let mut seen = s.seen();
    seen.events.push(format!("complete {batch}"));
    let accepted = !seen.completions.contains_key(&batch);
    seen.completions.entry(batch).or_insert(c);
    Json(CompletionAck { accepted })
}

async fn model(State(s): Stub, Path(name): Path<String>) -> Response {
    match s.seen().models.get(&name) {
        Some(m) => Json(m.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no such model", "code": "not_found"})),
        )
            .into_response(),
    }
}

async fn read_file(State(s): Stub, Path(name): Path<String>) -> Response {
    let (delay, bytes) = {
        let seen = s.seen();
        (seen.file_delay, seen.files.get(&name).cloned())
    };
    tokio::time::sleep(delay).await;
    match bytes {
        Some(bytes) => {
            let hash = blake3::hash(&bytes).to_hex().to_string();
            ([("x-idunno-hash", hash)], bytes).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn write_file(State(s): Stub, Path(name): Path<String>, body: Bytes) -> Response {
    let version = FileVersion {
        name: name.clone(),
        version: 1,
        size: body.len() as u64,
        hash: blake3::hash(&body).to_hex().to_string(),
        replicas: vec![],
        created_at_ms: 0,
    };
    s.seen().files.insert(name, body.to_vec());
    (StatusCode::CREATED, Json(version)).into_response()
}

// ---------------------------------------------------------------------------------------
// Stand-in storage node
// ---------------------------------------------------------------------------------------

/// `GET /internal/blobs/{hash}`; a `corrupt` node flips a byte of everything it serves.
struct StubStorageNode;

impl StubStorageNode {
    async fn start(blobs: HashMap<String, Vec<u8>>, corrupt: bool) -> String {
        type Blobs = Arc<(HashMap<String, Vec<u8>>, bool)>;
        async fn blob(
            State(b): State<Blobs>,
            headers: HeaderMap,
            Path(hash): Path<String>,
        ) -> Result<Vec<u8>, StatusCode> {
            if headers.get("x-idunno-secret").and_then(|v| v.to_str().ok()) != Some("cs") {
                return Err(StatusCode::FORBIDDEN);
            }
            let mut bytes = b.0.get(&hash).cloned().ok_or(StatusCode::NOT_FOUND)?;
            if b.1 {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x55;
            }
            Ok(bytes)
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = Router::new()
            .route("/internal/blobs/{hash}", get(blob))
            .with_state(Arc::new((blobs, corrupt)));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

const WEIGHTS: &str = "models/r18.safetensors";

fn r18_weights() -> Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES
        .get_or_init(|| weights::generate_to_bytes(Arch::ResNet18, 18).unwrap())
        .clone()
}

fn sample(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The images and a text file, by hash.
fn blobs() -> HashMap<String, Vec<u8>> {
    ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]
        .iter()
        .map(|n| sample(n))
        .chain([b"just some notes, not an image".to_vec()])
        .map(|b| (blake3::hash(&b).to_hex().to_string(), b))
        .collect()
}

fn input(index: u64, name: &str, bytes: Option<&[u8]>, replicas: &[&str]) -> LeasedInput {
    LeasedInput {
        index,
        name: name.to_string(),
        hash: bytes.map(|b| blake3::hash(b).to_hex().to_string()),
        size: bytes.map_or(0, |b| b.len() as u64),
        replicas: replicas.iter().map(|r| r.to_string()).collect(),
    }
}

fn lease(lease_id: u64, seq: u32, inputs: Vec<LeasedInput>) -> Lease {
    Lease {
        lease_id,
        batch_id: format!("1-{seq}"),
        job_id: 1,
        model: "r18".into(),
        arch: "resnet18".into(),
        weights: WEIGHTS.into(),
        input_size: 224,
        inputs,
        attempt: 1,
        deadline_ms: u64::MAX,
    }
}

fn config(stub: &StubCoordinator, cache: &tempfile::TempDir) -> WorkerConfig {
    let mut config = WorkerConfig::new(vec![stub.addr.clone()], cache.path().to_path_buf());
    config.batch_wait_ms = 200;
    config.threads = Some(2);
    config.cluster_secret = Some("cs".into());
    config.name = Some("test-worker".into());
    config
}

/// Polls `condition` every 20 ms until it holds; fails the test after `limit`.
async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_run_with_prefetch_and_ordered_results_with_error_results() {
    let stub = StubCoordinator::start().await;
    stub.register_model("r18", WEIGHTS, r18_weights());
    let good = StubStorageNode::start(blobs(), false).await;
    let corrupt = StubStorageNode::start(blobs(), true).await;
    let dead = "127.0.0.1:1";
    let (chelsea, coffee, astronaut, rocket) = (
        sample("chelsea.png"),
        sample("coffee.png"),
        sample("astronaut.png"),
        sample("rocket.jpg"),
    );
    let notes = b"just some notes, not an image".to_vec();
    stub.add_batch(lease(
        11,
        0,
        vec![
            input(0, "img/chelsea.png", Some(&chelsea), &[&corrupt, &good]),
            input(1, "img/notes.txt", Some(&notes), &[&good]),
            input(2, "img/missing.png", None, &[]),
            input(3, "img/coffee.png", Some(&coffee), &[dead, &good]),
        ],
    ));
    stub.add_batch(lease(
        12,
        1,
        vec![
            input(4, "img/astronaut.png", Some(&astronaut), &[&good]),
            input(5, "img/rocket.jpg", Some(&rocket), &[&good]),
        ],
    ));

    let cache = tempfile::tempdir().unwrap();
    let mut config = config(&stub, &cache);
    config.models = ModelSelection::Only(vec!["r18".into()]);
    let worker = idunno_worker::start(config).await.unwrap();
    assert_eq!(worker.worker_id(), "w-test");
    eventually(Duration::from_secs(60), "two completions", || {
        stub.seen().completions.len() == 2
    })
    .await;

    // Prefetch: the second lease was in hand before the first batch was reported.
    let events = stub.events();
    let at = |e: &str| events.iter().position(|x| x == e).unwrap();
    assert!(at("lease 1-1") < at("complete 1-0"), "{events:?}");

    // Batch 1-0: results in input order, errors in place, top-5 ranked.
    let first = stub.result("results/1/1-0.json");
    assert_eq!((first.job_id, first.batch_id.as_str()), (1, "1-0"));
    assert_eq!(
        (first.model.as_str(), first.worker.as_str()),
        ("r18", "w-test")
    );
    let names: Vec<&str> = first.results.iter().map(|r| r.input.as_str()).collect();
    assert_eq!(
        names,
        [
            "img/chelsea.png",
            "img/notes.txt",
            "img/missing.png",
            "img/coffee.png"
        ]
    );
    assert_eq!(
        first.results.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    for ok in [&first.results[0], &first.results[3]] {
        assert!(ok.error.is_none(), "{ok:?}");
        assert_eq!(ok.top.len(), 5);
        assert!(ok
            .top
            .windows(2)
            .all(|w| w[0].probability >= w[1].probability));
        assert!(ok.top.iter().all(|c| c.index < 1000 && !c.label.is_empty()));
        let mass: f32 = ok.top.iter().map(|c| c.probability).sum();
        assert!(mass > 0.0 && mass <= 1.0 + 1e-5, "{mass}");
    }
    assert!(first.results[1].top.is_empty());
    assert!(first.results[1]
        .error
        .as_deref()
        .unwrap()
        .contains("decode"));
    assert!(first.results[2]
        .error
        .as_deref()
        .unwrap()
        .contains("no such file"));

    {
        let seen = stub.seen();
        let completion = &seen.completions["1-0"];
        assert_eq!(completion.lease_id, 11);
        assert_eq!(completion.result, "results/1/1-0.json");
        assert_eq!(completion.failed, 2);
        assert_eq!(seen.completions["1-1"].failed, 0);
        assert_eq!(seen.registrations[0].accepts, Some(vec!["r18".to_string()]));
        assert_eq!(seen.registrations[0].name, "test-worker");
        assert!(seen.heartbeats.iter().any(|h| h.loaded == ["r18"]));
    }
    let second = stub.result("results/1/1-1.json");
    assert!(second
        .results
        .iter()
        .all(|r| r.error.is_none() && r.top.len() == 5));
    assert_eq!(second.results[1].input, "img/rocket.jpg");

    let stats = worker.stats();
    assert_eq!(
        (stats.batches, stats.queries, stats.failed_queries),
        (2, 6, 2)
    );
    worker.stop().await.unwrap();
    let seen = stub.seen();
    assert!(seen.releases.is_empty(), "nothing was in hand");
    assert_eq!(seen.events.last().unwrap(), "deregister w-test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_finishes_the_batch_in_hand_and_gives_back_the_prefetched_one() {
    let stub = StubCoordinator::start().await;
    stub.register_model("r18", WEIGHTS, r18_weights());
    // The first batch waits on a slow weights download, so a stop finds it in hand.
    stub.seen().file_delay = Duration::from_millis(1500);
    let node = StubStorageNode::start(blobs(), false).await;
    let chelsea = sample("chelsea.png");
    for (id, seq) in [(21, 0), (22, 1), (23, 2)] {
        let i = input(seq as u64, "img/chelsea.png", Some(&chelsea), &[&node]);
        stub.add_batch(lease(id, seq, vec![i]));
    }
    let cache = tempfile::tempdir().unwrap();
    let worker = idunno_worker::start(config(&stub, &cache)).await.unwrap();
    eventually(Duration::from_secs(20), "two leases in hand", || {
        stub.events().len() >= 2
    })
    .await;
    assert_eq!(stub.events(), ["lease 1-0", "lease 1-1"]);
    worker.stop().await.unwrap();

    let seen = stub.seen();
    assert_eq!(
        seen.events,
        [
            "lease 1-0",
            "lease 1-1",
            "release 1-1",
            "complete 1-0",
            "deregister w-test"
        ]
        .map(String::from),
        "the batch in hand is finished, the prefetched one given back, the third never leased"
    );
    assert_eq!(seen.releases[0].lease_id, 22);
    assert_eq!(seen.pending.len(), 1);
    let result: BatchResult = serde_json::from_slice(&seen.files["results/1/1-0.json"]).unwrap();
    assert!(result.results[0].error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_request_is_honoured_and_kill_leaves_no_trace() {
    let stub = StubCoordinator::start().await;
    stub.register_model("r18", WEIGHTS, r18_weights());
    stub.seen().load = vec!["r18".into(), "no-such-model".into()];
    let cache = tempfile::tempdir().unwrap();
    let worker = idunno_worker::start(config(&stub, &cache)).await.unwrap();
    assert_eq!(stub.seen().registrations[0].accepts, None);

    // Asked by the heartbeat answer, with no batch: the model is loaded and reported.
    eventually(Duration::from_secs(30), "r18 reported loaded", || {
        stub.seen().heartbeats.iter().any(|h| h.loaded == ["r18"])
    })
    .await;
    assert_eq!(worker.loaded_models(), ["r18"]);

    // A batch arrives; the worker is killed while it holds it.
    let node = StubStorageNode::start(blobs(), false).await;
    let chelsea = sample("chelsea.png");
    let inputs = (0..4)
        .map(|i| input(i, "img/chelsea.png", Some(&chelsea), &[&node]))
        .collect();
    stub.add_batch(lease(31, 0, inputs));
    eventually(Duration::from_secs(10), "the lease", || {
        stub.events().contains(&"lease 1-0".to_string())
    })
    .await;
    worker.kill().await;
    let beats = stub.seen().heartbeats.len();
    tokio::time::sleep(Duration::from_millis(400)).await;

    let seen = stub.seen();
    assert_eq!(seen.heartbeats.len(), beats, "no heartbeat after a kill");
    assert!(seen.releases.is_empty(), "a killed worker releases nothing");
    assert!(
        !seen.events.iter().any(|e| e.starts_with("deregister")),
        "a killed worker does not deregister: {:?}",
        seen.events
    );
}
