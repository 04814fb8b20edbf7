//! The worker's model cache against a real cluster in one process (a coordinator and three
//! storage nodes, each a real HTTP server on 127.0.0.1:0): weights are put through
//! `PUT /v1/files/…`, read by `idunno_worker::model_cache::ModelCache` through the coordinator's
//! `GET /v1/files/…`, and rotted on the nodes' disks with `idunno_sdfs::corrupt_byte_for_tests`.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use common::{cluster, eventually, hash_hex, http};
use idunno::embedded::EmbeddedCluster;
use idunno_api::file::ReplicaSet;
use idunno_models::{weights, Arch};
use idunno_sdfs::BlobHash;
use idunno_worker::model_cache::{ModelCache, ModelSpec};
use idunno_worker::pool::ComputePool;
use idunno_worker::WorkerError;
use reqwest::{Method, StatusCode};

const NODES: usize = 3;
const WEIGHTS: &str = "models/lite0.safetensors";

fn spec() -> ModelSpec {
    ModelSpec {
        name: "lite0".into(),
        arch: Arch::EfficientNetLite0,
        weights: WEIGHTS.into(),
        cost_ms: 0,
    }
}

/// A fresh model cache (as a newly started worker has) over `dir`.
fn cache(cluster: &EmbeddedCluster, dir: &Path) -> ModelCache {
    ModelCache::new(
        cluster.client(),
        dir.to_path_buf(),
        ComputePool::new(2).unwrap(),
    )
}

/// Puts `bytes` as the next version of `name` and waits until every storage node holds them.
async fn put(cluster: &EmbeddedCluster, name: &str, bytes: &[u8]) -> String {
    let addr = cluster.coordinator_addrs()[0].clone();
    let (code, body) = http(
        Method::PUT,
        &format!("http://{addr}/v1/files/{name}"),
        &[],
        Some(bytes.to_vec()),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let hash = hash_hex(bytes);
    let blob = BlobHash::parse(&hash).unwrap();
    eventually(&format!("{name} on every storage node"), || async {
        let (code, body) = http(
            Method::GET,
            &format!("http://{addr}/v1/files/{name}/replicas"),
            &[],
            None,
        )
        .await;
        let set: ReplicaSet = serde_json::from_slice(&body).ok()?;
        let everywhere = (0..NODES).all(|i| {
            let store = cluster.node(i).unwrap().store();
            store.get(&blob).unwrap().is_some()
        });
        let live = set.replicas.iter().filter(|r| r.alive).count();
        (code == StatusCode::OK && set.hash == hash && live == NODES && everywhere).then_some(())
    })
    .await;
    hash
}

/// Flips the byte at `offset` of blob `hash` on every storage node's disk (each node stopped
/// for it, then started again on its address and folder).
async fn rot_every_copy(cluster: &mut EmbeddedCluster, hash: &str, offset: u64) {
    for i in 0..NODES {
        cluster.stop_node(i).await.unwrap();
        idunno_sdfs::corrupt_byte_for_tests(cluster.node_data(i), hash, offset).unwrap();
        cluster.restart_node(i).await.unwrap();
    }
    cluster.wait_for_nodes(NODES).await.unwrap();
}

/// Content bytes the storage nodes have served since they (re)started.
fn bytes_served(cluster: &EmbeddedCluster) -> u64 {
    (0..NODES)
        .map(|i| cluster.node(i).unwrap().store().stats().bytes_read)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_loaded_once_and_weights_files_reused() {
    let (mut cluster, _dir) = cluster(1, NODES, 0, |_| {}).await;
    let bytes = weights::generate_to_bytes(Arch::EfficientNetLite0, 3).unwrap();
    let hash = put(&cluster, WEIGHTS, &bytes).await;
    let folder = tempfile::tempdir().unwrap();
    let cached = folder.path().join(format!("{hash}.safetensors"));
    let spec = spec();

    // First worker: downloads, verifies and keeps `<hash>.safetensors`; two requests at once
    // share the one load, and a later one is served from memory.
    let served = bytes_served(&cluster);
    let first = cache(&cluster, folder.path());
    assert!(first.loaded().is_empty());
    let (a, b) = tokio::join!(first.get(&spec), first.get(&spec));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(Arc::ptr_eq(&a, &b));
    assert!(Arc::ptr_eq(&a, &first.get(&spec).await.unwrap()));
    assert_eq!(first.downloads(), 1);
    assert_eq!(
        bytes_served(&cluster) - served,
        bytes.len() as u64,
        "the storage nodes served the weights exactly once"
    );
    assert_eq!(first.loaded(), vec!["lite0".to_string()]);
    assert!(first.is_loaded("lite0") && !first.is_loaded("other"));
    assert_eq!(hash_hex(&std::fs::read(&cached).unwrap()), hash);

    // A restarted worker whose cached copy was damaged: it downloads the weights again.
    let mut damaged = std::fs::read(&cached).unwrap();
    damaged[1000] ^= 0xff;
    std::fs::write(&cached, damaged).unwrap();
    let second = cache(&cluster, folder.path());
    assert_eq!(
        second.get(&spec).await.unwrap().arch(),
        Arch::EfficientNetLite0
    );
    assert_eq!(second.downloads(), 1);
    assert_eq!(hash_hex(&std::fs::read(&cached).unwrap()), hash);

    // Rot the last byte of every copy in SDFS: a download now fails at the end, but the
    // coordinator still answers with the hash. A restarted worker over the same folder finds
    // the file by that hash, so it loads only if it reads nothing more.
    rot_every_copy(&mut cluster, &hash, bytes.len() as u64 - 1).await;
    let third = cache(&cluster, folder.path());
    assert_eq!(
        third.get(&spec).await.unwrap().arch(),
        Arch::EfficientNetLite0
    );
    assert_eq!(third.downloads(), 0);
    assert!(third.is_loaded("lite0"));
    // The premise: reading the file from SDFS no longer gives its bytes.
    let addr = cluster.coordinator_addrs()[0].clone();
    let response = reqwest::get(format!("http://{addr}/v1/files/{WEIGHTS}"))
        .await
        .unwrap();
    let whole = response.status() == StatusCode::OK
        && response.bytes().await.is_ok_and(|got| got[..] == bytes[..]);
    assert!(!whole, "every copy of the weights should be rotten");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_download_is_refused_and_not_kept() {
    let (mut cluster, _dir) = cluster(1, NODES, 0, |_| {}).await;
    let bytes = weights::generate_to_bytes(Arch::EfficientNetLite0, 4).unwrap();
    assert!(bytes.len() > 4 << 20, "{} bytes", bytes.len());
    let hash = put(&cluster, WEIGHTS, &bytes).await;
    // Rotten in the middle, on every node: the coordinator has answered and sent megabytes
    // when no replica can give it the rest.
    rot_every_copy(&mut cluster, &hash, bytes.len() as u64 / 2).await;
    let folder = tempfile::tempdir().unwrap();
    let cache = cache(&cluster, folder.path());
    let err = cache.get(&spec()).await.unwrap_err();
    assert!(matches!(err, WorkerError::Download { .. }), "{err}");
    assert!(err.is_transient(), "{err}");
    let left: Vec<_> = std::fs::read_dir(folder.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing is kept: {left:?}");
    assert!(cache.loaded().is_empty());
    assert_eq!(cache.downloads(), 0);

    // The weights are put again: the failed load left nothing behind in the worker either,
    // so the next request loads them.
    assert_eq!(put(&cluster, WEIGHTS, &bytes).await, hash);
    let model = cache.get(&spec()).await.unwrap();
    assert_eq!(model.arch(), Arch::EfficientNetLite0);
    assert_eq!(cache.downloads(), 1);
    assert_eq!(cache.loaded(), vec!["lite0".to_string()]);
    let cached = folder.path().join(format!("{hash}.safetensors"));
    assert_eq!(hash_hex(&std::fs::read(cached).unwrap()), hash);
    cluster.shutdown().await;
}
