//! SDFS end to end, in process: 3 coordinators and 4 storage nodes on loopback port 0 with real
//! sled folders. Round trips, versions, delete, ls/store against the bytes on the nodes, node
//! failures and repair, bit rot, nodes coming back, bad input.

mod common;

use std::collections::BTreeSet;

use common::{cluster, content, eventually, hash_hex, http, json};
use idunno::embedded::EmbeddedCluster;
use idunno_api::file::{BlobInfo, FileVersion, ReplicaSet, StorageNode};
use reqwest::{Method, StatusCode};

fn url(addr: &str, path: &str) -> String {
    format!("http://{addr}{path}")
}

async fn put(addr: &str, name: &str, bytes: Vec<u8>) -> FileVersion {
    let (code, body) = http(
        Method::PUT,
        &url(addr, &format!("/v1/files/{name}")),
        &[],
        Some(bytes),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap()
}

async fn get(addr: &str, name: &str) -> (StatusCode, Vec<u8>) {
    http(
        Method::GET,
        &url(addr, &format!("/v1/files/{name}")),
        &[],
        None,
    )
    .await
}

async fn replicas(addr: &str, name: &str) -> ReplicaSet {
    let (code, body) = http(
        Method::GET,
        &url(addr, &format!("/v1/files/{name}/replicas")),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// The hashes a storage node actually holds (none if it is down).
async fn held(cluster: &EmbeddedCluster, node: usize) -> BTreeSet<String> {
    let resp = reqwest::get(url(&cluster.node_addr(node), "/internal/blobs")).await;
    let Ok(resp) = resp else {
        return BTreeSet::new();
    };
    let blobs: Vec<BlobInfo> = resp.json().await.unwrap();
    blobs.into_iter().map(|b| b.hash).collect()
}

/// Waits until `name` has `n` live replicas, each on a node that really holds the bytes.
async fn wait_replicated(cluster: &EmbeddedCluster, name: &str, n: usize) -> ReplicaSet {
    let addr = cluster.coordinator_addrs()[0].clone();
    eventually(&format!("{name} to have {n} live replicas"), || async {
        let set = replicas(&addr, name).await;
        let live: Vec<_> = set.replicas.iter().filter(|r| r.alive).collect();
        if live.len() != n {
            return None;
        }
        for r in &live {
            let index = (1..=8).find(|i| format!("s{i}") == r.node)? - 1;
            if !held(cluster, index).await.contains(&set.hash) {
                return None;
            }
        }
        Some(set)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_through_any_coordinator() {
    let (cluster, _dir) = cluster(3, 4, 0, |_| {}).await;
    let addrs = cluster.coordinator_addrs();
    for (i, len) in [0usize, 1000, 64 << 20].into_iter().enumerate() {
        let bytes = content(i as u64, len);
        let name = format!("data/file-{len}.bin");
        // Written through one coordinator, read through another.
        let v = put(&addrs[i % 3], &name, bytes.clone()).await;
        assert_eq!((v.version, v.size), (1, len as u64));
        assert_eq!(v.hash, hash_hex(&bytes));
        assert!(
            v.replicas.len() >= 2,
            "acknowledged by a write quorum: {v:?}"
        );
        let (code, got) = get(&addrs[(i + 1) % 3], &name).await;
        assert_eq!(code, StatusCode::OK);
        assert!(got == bytes, "{len} bytes came back different");
    }
    // A byte range of the big file.
    let big = content(2, 64 << 20);
    let (code, part) = http(
        Method::GET,
        &url(&addrs[2], &format!("/v1/files/data/file-{}.bin", 64 << 20)),
        &[("range", "bytes=1000000-1000999")],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part, big[1_000_000..1_001_000].to_vec());
    // Every file ends up with 3 replicas, on nodes that hold its bytes.
    wait_replicated(&cluster, &format!("data/file-{}.bin", 64 << 20), 3).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_puts_keep_five_versions_in_order() {
    let (cluster, _dir) = cluster(3, 4, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[1].clone();
    for i in 1..=6u64 {
        put(
            &addr,
            "notes/todo.txt",
            format!("version {i}\n").into_bytes(),
        )
        .await;
    }
    let (code, body) = http(
        Method::GET,
        &url(&addr, "/v1/files/notes/todo.txt/versions"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let versions: Vec<FileVersion> = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![6, 5, 4, 3, 2]
    );
    for v in &versions {
        let (code, got) = http(
            Method::GET,
            &url(
                &addr,
                &format!("/v1/files/notes/todo.txt?version={}", v.version),
            ),
            &[],
            None,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(got, format!("version {}\n", v.version).into_bytes());
    }
    let (code, body) = http(
        Method::GET,
        &url(&addr, "/v1/files/notes/todo.txt?version=1"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "version 1 was dropped");
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("no version 1"));
    let (_, body) = http(
        Method::GET,
        &url(&addr, "/v1/files/notes/todo.txt/versions?n=2"),
        &[],
        None,
    )
    .await;
    let two: Vec<FileVersion> = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        two.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![6, 5]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_name_and_collects_its_blobs() {
    let (cluster, _dir) = cluster(3, 4, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let v = put(&addr, "tmp/a.bin", content(9, 5000)).await;
    let (code, _) = http(
        Method::DELETE,
        &url(&addr, "/v1/files/tmp/a.bin"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(get(&addr, "tmp/a.bin").await.0, StatusCode::NOT_FOUND);
    let (code, _) = http(
        Method::DELETE,
        &url(&addr, "/v1/files/tmp/a.bin"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    eventually("the blob to leave every node", || async {
        for i in 0..4 {
            if held(&cluster, i).await.contains(&v.hash) {
                return None;
            }
        }
        Some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_and_store_agree_with_where_the_bytes_are() {
    let (cluster, _dir) = cluster(3, 4, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[2].clone();
    let mut stored = Vec::new();
    for i in 0..6 {
        let name = format!("images/{i}.png");
        put(&addr, &name, content(100 + i, 3000)).await;
        stored.push(wait_replicated(&cluster, &name, 3).await);
    }
    for node in 0..4 {
        let id = cluster.node_id(node);
        let (code, body) = http(
            Method::GET,
            &url(&addr, &format!("/v1/nodes/{id}/files")),
            &[],
            None,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        let listed: BTreeSet<String> = serde_json::from_slice::<Vec<FileVersion>>(&body)
            .unwrap()
            .into_iter()
            .map(|v| v.hash)
            .collect();
        let expected: BTreeSet<String> = stored
            .iter()
            .filter(|s| s.replicas.iter().any(|r| r.node == id))
            .map(|s| s.hash.clone())
            .collect();
        assert_eq!(listed, expected, "store of {id}");
        assert!(
            expected.is_subset(&held(&cluster, node).await),
            "{id} holds what store says"
        );
    }
    let (_, body) = http(Method::GET, &url(&addr, "/v1/nodes"), &[], None).await;
    let nodes: Vec<StorageNode> = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.blobs).sum::<u64>(),
        18,
        "6 files × 3 replicas"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_four_storage_nodes_fail_and_nothing_is_lost() {
    let (mut cluster, _dir) = cluster(3, 4, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            (
                format!("set/{i}.bin"),
                content(200 + i, 40_000 + i as usize),
            )
        })
        .collect();
    for (name, bytes) in &files {
        put(&addr, name, bytes.clone()).await;
        wait_replicated(&cluster, name, 3).await;
    }
    // One node dies: every file is re-replicated to 3 live copies.
    cluster.stop_node(0).await.unwrap();
    for (name, _) in &files {
        let set = wait_replicated(&cluster, name, 3).await;
        assert!(set
            .replicas
            .iter()
            .filter(|r| r.alive)
            .all(|r| r.node != "s1"));
    }
    // A second one dies: two live nodes are left, and every file still reads correctly.
    cluster.stop_node(1).await.unwrap();
    for (name, bytes) in &files {
        let (code, got) = get(&addr, name).await;
        assert_eq!(code, StatusCode::OK, "{name}");
        assert!(&got == bytes, "{name} came back different");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_never_served_and_the_copy_is_repaired() {
    let (mut cluster, _dir) = cluster(3, 4, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let bytes = content(7, 300_000);
    put(&addr, "rot/victim.bin", bytes.clone()).await;
    let set = wait_replicated(&cluster, "rot/victim.bin", 3).await;
    // Reads try replicas in order: rot the first one.
    let first = &set.replicas[0].node;
    let index = (0..4).find(|i| cluster.node_id(*i) == *first).unwrap();
    cluster.stop_node(index).await.unwrap();
    idunno_sdfs::corrupt_byte_for_tests(cluster.node_data(index), &set.hash, 12_345).unwrap();
    cluster.restart_node(index).await.unwrap();
    cluster.wait_for_nodes(4).await.unwrap();
    let (code, got) = get(&addr, "rot/victim.bin").await;
    assert_eq!(code, StatusCode::OK);
    assert!(got == bytes, "the right bytes, from another replica");
    // The rotten copy was dropped and reported; repair restores 3 good copies.
    let repaired = wait_replicated(&cluster, "rot/victim.bin", 3).await;
    for r in &repaired.replicas {
        let (code, got) = http(
            Method::GET,
            &url(&r.addr, &format!("/internal/blobs/{}", set.hash)),
            &[],
            None,
        )
        .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(hash_hex(&got), set.hash, "every copy on {} is good", r.node);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nodes_blobs_count_again_without_copying() {
    // Three nodes and R=3: while one is down there is nowhere to copy to.
    let (mut cluster, _dir) = cluster(3, 3, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    put(&addr, "keep/me.bin", content(3, 10_000)).await;
    let set = wait_replicated(&cluster, "keep/me.bin", 3).await;
    cluster.stop_node(2).await.unwrap();
    eventually("s3 to be seen dead", || async {
        let set = replicas(&addr, "keep/me.bin").await;
        (set.replicas.iter().filter(|r| r.alive).count() == 2).then_some(())
    })
    .await;
    cluster.restart_node(2).await.unwrap();
    let back = wait_replicated(&cluster, "keep/me.bin", 3).await;
    assert_eq!(back.replicas.len(), 3, "no duplicate replicas: {back:?}");
    assert_eq!(back.hash, set.hash);
    cluster.shutdown().await;
}

/// A request (method, path, body, headers) and the status it must get.
type Case<'a> = (
    Method,
    &'a str,
    Option<Vec<u8>>,
    &'a [(&'a str, &'a str)],
    StatusCode,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_requests_get_a_4xx_and_leave_nothing() {
    let (cluster, _dir) = cluster(3, 4, 0, |c| c.max_file_size = 1 << 20).await;
    let addr = cluster.coordinator_addrs()[1].clone();
    put(&addr, "ok.txt", b"fine".to_vec()).await;
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            "/v1/files/a//b",
            Some(b"x".to_vec()),
            &[],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/files/ctl%01name",
            Some(b"x".to_vec()),
            &[],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/files/trailing/",
            Some(b"x".to_vec()),
            &[],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/files/x/replicas",
            Some(b"x".to_vec()),
            &[],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/files/r.bin?replicas=0",
            Some(b"x".to_vec()),
            &[],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/files/missing.bin",
            None,
            &[],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/files/ok.txt?version=9",
            None,
            &[],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/files/ok.txt?version=x",
            None,
            &[],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/files/ok.txt",
            None,
            &[("range", "bytes=10-20")],
            StatusCode::RANGE_NOT_SATISFIABLE,
        ),
        (
            Method::GET,
            "/v1/files/missing/replicas",
            None,
            &[],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/nodes/nobody/files",
            None,
            &[],
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, body, headers, want) in cases {
        let (code, bytes) = http(method.clone(), &url(&addr, path), headers, body).await;
        assert_eq!(
            code,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let err = json(&bytes);
        assert!(
            err["error"].is_string() && err["code"].is_string(),
            "{method} {path}: {err}"
        );
    }
    // Too large by its Content-Length: refused before the body is read, by leader and followers.
    for node in cluster.coordinator_addrs() {
        let big = vec![0; 2 << 20];
        let (code, bytes) = common::raw_request(&node, "PUT", "/v1/files/big.bin", &big).await;
        assert_eq!(code, 413, "{node}: {}", String::from_utf8_lossy(&bytes));
    }
    // Traversal names, sent byte for byte (an HTTP client would normalise them away).
    for (method, path) in [
        ("PUT", "/v1/files/../etc/passwd"),
        ("PUT", "/v1/files/a/./b"),
        ("PUT", "/v1/files/images/%2E%2E/x"),
        ("GET", "/v1/files/../../ok.txt"),
        ("DELETE", "/v1/files/.."),
    ] {
        let (code, bytes) = common::raw_request(&addr, method, path, b"x").await;
        assert_eq!(
            code,
            400,
            "{method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(json(&bytes)["error"].is_string());
    }
    // An upload cut off by the size limit mid-stream (no Content-Length) leaves nothing.
    let stream =
        futures::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![7u8; 64 << 10])));
    let resp = reqwest::Client::new()
        .put(url(&addr, "/v1/files/streamed.bin"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, body) = http(Method::GET, &url(&addr, "/v1/files"), &[], None).await;
    let names: Vec<String> = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        vec!["ok.txt".to_string()],
        "only the good file is visible"
    );
    cluster.shutdown().await;
}
