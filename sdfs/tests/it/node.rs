//! A storage node as a process: it survives restarts on the same folder, registers with the
//! coordinators once they answer, heartbeats what it holds, reports lost blobs until a
//! heartbeat carrying them is accepted, and registers again when it is forgotten. The
//! coordinator here is a stand-in that records what it is told.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use idunno_api::file::{NodeHeartbeat, NodeRegistration};
use idunno_sdfs::chunk::CHUNK_SIZE;
use idunno_sdfs::BlobHash;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_still_has_its_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let client = http();
    let blobs: Vec<Vec<u8>> = (0..3)
        .map(|i| random_bytes(i * CHUNK_SIZE + 100, i as u64))
        .collect();
    let node = start_node("s1", dir.path(), |_| {}).await;
    for b in &blobs {
        assert_eq!(put_blob(&client, &node.addr, b, None).await.0, 201);
    }
    node.shutdown().await.unwrap();

    // Twice: a restart right after a restart must find the folder free too.
    for _ in 0..2 {
        let node = start_node("s1", dir.path(), |_| {}).await;
        for b in &blobs {
            assert_eq!(
                get_blob(&client, &node.addr, &hash_hex(b)).await.unwrap(),
                *b
            );
        }
        let totals = node.store().totals();
        assert_eq!(totals.blobs, 3);
        assert_eq!(
            totals.bytes,
            blobs.iter().map(|b| b.len() as u64).sum::<u64>()
        );
        node.shutdown().await.unwrap();
    }
}

/// What the stand-in coordinator was told, and how it should answer.
#[derive(Default)]
struct Seen {
    registrations: Vec<NodeRegistration>,
    heartbeats: Vec<NodeHeartbeat>,
    /// Answer heartbeats with 500.
    failing: bool,
    /// Answer the next heartbeat with 404 ("unknown node").
    forget: bool,
}

type Shared = Arc<Mutex<Seen>>;

async fn register(
    State(s): State<Shared>,
    Json(r): Json<NodeRegistration>,
) -> (StatusCode, Json<Value>) {
    s.lock().unwrap().registrations.push(r);
    (StatusCode::CREATED, Json(json!({})))
}

async fn heartbeat(
    State(s): State<Shared>,
    Path(_id): Path<String>,
    Json(h): Json<NodeHeartbeat>,
) -> (StatusCode, Json<Value>) {
    let mut s = s.lock().unwrap();
    if s.failing {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "down", "code": "internal"})),
        );
    }
    if s.forget {
        s.forget = false;
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "who?", "code": "not_found"})),
        );
    }
    s.heartbeats.push(h);
    (StatusCode::OK, Json(json!({})))
}

/// Waits (up to 10 s) until `cond` holds for what the coordinator saw.
async fn wait_for(seen: &Shared, what: &str, cond: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if cond(&seen.lock().unwrap()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_heartbeats_and_reports_lost_blobs() {
    // A coordinator address where nobody listens yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coordinator = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s7", dir.path(), |c| {
        c.coordinators = vec![coordinator.clone()];
        c.heartbeat_ms = 50;
    })
    .await;
    let client = http();

    // It serves blobs while no coordinator answers.
    let data = random_bytes(2 * CHUNK_SIZE + 9, 1);
    assert_eq!(put_blob(&client, &node.addr, &data, None).await.0, 201);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/v1/nodes/register", post(register))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind(&coordinator).await.unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    wait_for(&seen, "a registration", |s| !s.registrations.is_empty()).await;
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.registrations[0].id, "s7");
        assert_eq!(s.registrations[0].addr, node.addr);
    }
    let size = data.len() as u64;
    wait_for(&seen, "a heartbeat with the blob", |s| {
        s.heartbeats
            .last()
            .is_some_and(|h| h.blobs == 1 && h.bytes == size)
    })
    .await;

    // A corrupt blob found while heartbeats fail stays to be reported...
    seen.lock().unwrap().failing = true;
    let hash = BlobHash::parse(&hash_hex(&data)).unwrap();
    node.store().corrupt_byte_for_tests(&hash, 5).unwrap();
    assert!(get_blob(&client, &node.addr, &hash.to_hex()).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.store().lost().unwrap().hashes(), vec![hash]);

    // ...and is reported once they work again, then forgotten.
    let before = seen.lock().unwrap().heartbeats.len();
    seen.lock().unwrap().failing = false;
    wait_for(&seen, "the lost blob in a heartbeat", |s| {
        s.heartbeats[before..]
            .iter()
            .any(|h| h.lost == vec![hash.to_hex()])
    })
    .await;
    wait_for(&seen, "a heartbeat after the report", |s| {
        s.heartbeats
            .last()
            .is_some_and(|h| h.lost.is_empty() && h.blobs == 0)
    })
    .await;
    assert!(node.store().lost().unwrap().is_empty());

    // A coordinator that does not know the node makes it register again.
    seen.lock().unwrap().forget = true;
    wait_for(&seen, "a second registration", |s| {
        s.registrations.len() >= 2
    })
    .await;

    node.shutdown().await.unwrap();
    server.abort();
}
