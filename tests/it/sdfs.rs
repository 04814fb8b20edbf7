//! SDFS end to end, in process: 3 coordinators and 4 storage nodes on loopback port 0 with real
//! sled folders. Round trips, versions, delete, ls/store against the bytes on the nodes, node
//! failures and repair, bit rot, nodes coming back, bad input.

use crate::common;

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
    let (cluster, _dir) = cluster(3, 4, 0, |c| c.gc_grace_ms = 200).await;
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
    // Two nodes crash at the same moment: every file still reads correctly at once.
    cluster.kill_nodes(&[0, 1]).await.unwrap();
    for (name, bytes) in &files {
        let (code, got) = get(&addr, name).await;
        assert_eq!(code, StatusCode::OK, "{name}");
        assert!(&got == bytes, "{name} came back different");
    }
    // With two live nodes left, every file is kept on both of them.
    for (name, _) in &files {
        let set = wait_replicated(&cluster, name, 2).await;
        let mut live: Vec<&str> = set
            .replicas
            .iter()
            .filter(|r| r.alive)
            .map(|r| r.node.as_str())
            .collect();
        live.sort();
        assert_eq!(live, vec!["s3", "s4"], "{name}");
    }
    // One comes back with its data: every file has 3 live copies again.
    cluster.restart_node(0).await.unwrap();
    for (name, bytes) in &files {
        wait_replicated(&cluster, name, 3).await;
        assert!(&get(&addr, name).await.1 == bytes, "{name}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_never_served_and_the_copy_is_repaired() {
    let (mut cluster, _dir) = cluster(3, 4, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    // Rot in the first chunk: the node refuses before sending a byte. Rot in a later chunk
    // of a multi-chunk file (64 KiB chunks): the node fails mid-stream, after sending the
    // chunks before it, and the read must resume on another replica at that offset.
    let cases = [
        ("rot/victim.bin", content(7, 300_000), 12_345u64),
        ("rot/late.bin", content(8, 1 << 20), 700_000),
    ];
    for (name, bytes, offset) in &cases {
        put(&addr, name, bytes.clone()).await;
        let set = wait_replicated(&cluster, name, 3).await;
        // Reads try replicas in order: rot the first one.
        let first = &set.replicas[0].node;
        let index = (0..4).find(|i| cluster.node_id(*i) == *first).unwrap();
        cluster.stop_node(index).await.unwrap();
        idunno_sdfs::corrupt_byte_for_tests(cluster.node_data(index), &set.hash, *offset).unwrap();
        cluster.restart_node(index).await.unwrap();
        cluster.wait_for_nodes(4).await.unwrap();
        let (code, got) = get(&addr, name).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(got.len(), bytes.len(), "{name}: every byte");
        assert!(
            got == *bytes,
            "{name}: the right bytes, partly from another replica"
        );
        // The rotten copy was dropped and reported; repair restores 3 good copies.
        let repaired = wait_replicated(&cluster, name, 3).await;
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
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_fail_the_content_hash_never_complete_a_read() {
    let (mut cluster, _dir) = cluster(3, 3, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let bytes = content(9, 200_000);
    put(&addr, "forged.bin", bytes.clone()).await;
    let set = wait_replicated(&cluster, "forged.bin", 3).await;
    // The first replica in read order serves a changed last chunk that passes its own checks.
    let first = &set.replicas[0].node;
    let index = (0..3).find(|i| cluster.node_id(*i) == *first).unwrap();
    cluster.stop_node(index).await.unwrap();
    idunno_sdfs::forge_byte_for_tests(cluster.node_data(index), &set.hash, 199_000).unwrap();
    cluster.restart_node(index).await.unwrap();
    cluster.wait_for_nodes(3).await.unwrap();
    let resp = reqwest::get(url(&addr, "/v1/files/forged.bin"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    match resp.bytes().await {
        Err(_) => {}
        Ok(got) => {
            assert!(got.len() < bytes.len(), "a forged read must not complete");
            assert_eq!(&got[..], &bytes[..got.len()], "what came is right");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nodes_blobs_count_again_without_copying() {
    let (mut cluster, _dir) = cluster(3, 4, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("keep/{i}.bin"),
                content(300 + i, 20_000 + i as usize),
            )
        })
        .collect();
    for (name, bytes) in &files {
        put(&addr, name, bytes.clone()).await;
        wait_replicated(&cluster, name, 3).await;
    }
    let had = held(&cluster, 3).await;
    assert!(!had.is_empty(), "s4 holds some of the files");
    // s4 crashes; repair copies its blobs elsewhere and drops it from every replica set.
    cluster.kill_nodes(&[3]).await.unwrap();
    for (name, _) in &files {
        eventually(
            &format!("{name} to be fully replicated without s4"),
            || async {
                let set = replicas(&addr, name).await;
                let ok = set.replicas.len() == 3
                    && set.replicas.iter().all(|r| r.alive && r.node != "s4");
                ok.then_some(())
            },
        )
        .await;
    }
    // It comes back with its data: its copies are counted again and the surplus is trimmed,
    // so every file has exactly 3 copies and every node holds exactly what the namespace says.
    cluster.restart_node(3).await.unwrap();
    cluster.wait_for_nodes(4).await.unwrap();
    eventually("every node to hold exactly its listed copies", || async {
        let mut placed: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 4];
        for (name, _) in &files {
            let set = replicas(&addr, name).await;
            if set.replicas.len() != 3 || !set.replicas.iter().all(|r| r.alive) {
                return None;
            }
            for r in &set.replicas {
                let i = (0..4).find(|i| cluster.node_id(*i) == r.node)?;
                placed[i].insert(set.hash.clone());
            }
        }
        for (i, listed) in placed.iter().enumerate() {
            if held(&cluster, i).await != *listed {
                return None;
            }
        }
        Some(())
    })
    .await;
    // Nothing was copied to s4: what it had counted, and it needed nothing else.
    let stats = cluster.node(3).unwrap().store().stats();
    assert_eq!(
        stats.bytes_written, 0,
        "no bytes re-copied to the returning node"
    );
    for (name, bytes) in &files {
        assert!(&get(&addr, name).await.1 == bytes, "{name}");
    }
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
            "/v1/files/ok.txt",
            None,
            &[("range", "bytes=5-2")],
            StatusCode::BAD_REQUEST,
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
    // An upload cut off by the size limit mid-stream (no Content-Length) gets a 413 from the
    // leader and from followers (which forward it) alike, and leaves nothing. 10 MiB against
    // a 1 MiB limit: far more than the sockets buffer, so the answer reaches the client only
    // because the node reads the rest of the body before it answers.
    for node in cluster.coordinator_addrs() {
        let stream =
            futures::stream::iter((0..160).map(|_| Ok::<_, std::io::Error>(vec![7u8; 64 << 10])));
        let resp = reqwest::Client::new()
            .put(url(&node, "/v1/files/streamed.bin"))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{node}: {body}");
        assert!(json(body.as_bytes())["error"].is_string(), "{node}: {body}");
    }
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

/// The leader's address.
async fn leader_addr(cluster: &EmbeddedCluster) -> String {
    let id = cluster
        .coordinators
        .wait_for_leader(common::WAIT)
        .await
        .expect("a leader");
    cluster.coordinators.addr(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_stored_again_right_after_its_delete_outlives_collection() {
    // A short grace period, so collection fires while the second put of the same content is
    // still in flight: the nodes answer that put from the copy being collected.
    let (cluster, _dir) = cluster(3, 4, 0, |c| c.gc_grace_ms = 150).await;
    let addr = leader_addr(&cluster).await;
    let mut kept = Vec::new();
    for round in 0..6u64 {
        let bytes = content(500 + round, (1 + round as usize) << 20);
        let (first, again) = (format!("gc/{round}-a.bin"), format!("gc/{round}-b.bin"));
        put(&addr, &first, bytes.clone()).await;
        let (code, _) = http(
            Method::DELETE,
            &url(&addr, &format!("/v1/files/{first}")),
            &[],
            None,
        )
        .await;
        assert_eq!(code, StatusCode::NO_CONTENT);
        put(&addr, &again, bytes.clone()).await;
        kept.push((again, bytes));
    }
    // A blob deleted after all of them is collected once the grace period has passed, so
    // theirs has been too.
    let marker = put(&addr, "gc/marker.bin", content(599, 1000)).await;
    http(
        Method::DELETE,
        &url(&addr, "/v1/files/gc/marker.bin"),
        &[],
        None,
    )
    .await;
    eventually("the marker blob to be collected", || async {
        for i in 0..4 {
            if held(&cluster, i).await.contains(&marker.hash) {
                return None;
            }
        }
        Some(())
    })
    .await;
    for (name, bytes) in &kept {
        let set = wait_replicated(&cluster, name, 3).await;
        for r in &set.replicas {
            let (code, got) = http(
                Method::GET,
                &url(&r.addr, &format!("/internal/blobs/{}", set.hash)),
                &[],
                None,
            )
            .await;
            assert_eq!(code, StatusCode::OK, "{name} on {}", r.node);
            assert!(got == *bytes, "{name} on {}", r.node);
        }
        assert!(get(&addr, name).await.1 == *bytes, "{name}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_an_evicted_version_still_gets_all_of_it() {
    let (cluster, _dir) = cluster(3, 3, 0, |c| c.gc_grace_ms = 2_000).await;
    let addr = leader_addr(&cluster).await;
    let old = content(600, 48 << 20);
    let v1 = put(&addr, "evict/me.bin", old.clone()).await;
    wait_replicated(&cluster, "evict/me.bin", 3).await;
    let resp = reqwest::get(url(&addr, "/v1/files/evict/me.bin?version=1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        got.extend_from_slice(&futures::StreamExt::next(&mut body).await.unwrap().unwrap());
    }
    // Five more puts evict version 1 while it is being read.
    for i in 0..5u64 {
        put(&addr, "evict/me.bin", content(601 + i, 1000)).await;
    }
    let (code, _) = http(
        Method::GET,
        &url(&addr, "/v1/files/evict/me.bin?version=1"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "version 1 is gone from the namespace"
    );
    while let Some(piece) = futures::StreamExt::next(&mut body).await {
        got.extend_from_slice(&piece.expect("the read goes on"));
    }
    assert!(got == old, "the reader got all of version 1");
    // After the grace period its copies are collected.
    eventually("the evicted blob to be collected", || async {
        for i in 0..3 {
            if held(&cluster, i).await.contains(&v1.hash) {
                return None;
            }
        }
        Some(())
    })
    .await;
    cluster.shutdown().await;
}

/// Requests a storage node answered with a 4xx, from its `/metrics`.
async fn refused_requests(addr: String) -> u64 {
    let (_, body) = http(Method::GET, &format!("http://{addr}/metrics"), &[], None).await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("idunno_http_requests_total{") && l.contains(r#"status="4xx""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_client_breaks_off_leaves_no_blob_on_any_node() {
    let (cluster, _dir) = cluster(3, 3, 0, |_| {}).await;
    let addr = leader_addr(&cluster).await;
    // A node refusing the upload answers 400: a client error in its metrics.
    let refused = |i: usize| refused_requests(cluster.node_addr(i));
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(refused(i).await);
    }
    // 4 MiB arrive, then the client's body fails (no Content-Length: only the error tells
    // the coordinator the upload is incomplete).
    let pieces = (0..64)
        .map(|i| Ok::<_, std::io::Error>(content(700 + i, 64 << 10)))
        .chain(std::iter::once(Err(std::io::Error::other(
            "the disk went away",
        ))));
    let sent = reqwest::Client::new()
        .put(url(&addr, "/v1/files/broken.bin"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await;
    assert!(
        sent.as_ref().map_or(true, |r| r.status().is_client_error()),
        "{sent:?}"
    );
    // Once each node has finished with its share of the upload (refused it, or stored
    // something), it must hold nothing.
    eventually("every node to finish with the broken upload", || async {
        for (i, &errors_before) in before.iter().enumerate() {
            let store = cluster.node(i).unwrap().store();
            let settled = (refused(i).await > errors_before || store.totals().blobs > 0)
                && store.content_files().unwrap() == store.totals().blobs as usize;
            if !settled {
                return None;
            }
        }
        Some(())
    })
    .await;
    for i in 0..3 {
        assert!(held(&cluster, i).await.is_empty(), "s{} kept a blob", i + 1);
    }
    let (code, _) = get(&addr, "broken.bin").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_node_routes_need_the_cluster_secret() {
    let (cluster, dir) = cluster(3, 0, 0, |c| c.cluster_secret = Some("k3y".into())).await;
    let addr = cluster.coordinator_addrs()[1].clone();
    let registration =
        serde_json::to_vec(&serde_json::json!({"id": "intruder", "addr": "127.0.0.1:9"})).unwrap();
    let json_type = ("content-type", "application/json");
    for headers in [
        vec![json_type],
        vec![json_type, ("x-idunno-secret", "guess")],
    ] {
        for path in ["/v1/nodes/register", "/v1/nodes/intruder/heartbeat"] {
            let body = if path.ends_with("register") {
                registration.clone()
            } else {
                br#"{"blobs":0,"bytes":0}"#.to_vec()
            };
            let (code, bytes) = http(Method::POST, &url(&addr, path), &headers, Some(body)).await;
            assert_eq!(
                code,
                StatusCode::FORBIDDEN,
                "{path}: {}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(json(&bytes)["error"].is_string());
        }
    }
    // A storage node given the secret registers and stays alive by its heartbeats.
    let mut config = idunno_sdfs::NodeConfig::new("s1", dir.path().join("s1"));
    config.coordinators = cluster.coordinator_addrs();
    config.cluster_secret = Some("k3y".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = idunno_sdfs::start(config, listener).await.unwrap();
    cluster.wait_for_nodes(1).await.unwrap();
    let (_, body) = http(Method::GET, &url(&addr, "/v1/nodes"), &[], None).await;
    let nodes: Vec<StorageNode> = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        nodes
            .iter()
            .map(|n| (n.id.as_str(), n.alive))
            .collect::<Vec<_>>(),
        vec![("s1", true)],
        "only the node with the secret is known"
    );
    node.shutdown().await.unwrap();
    cluster.shutdown().await;
}

/// A storage node in its own process (the `idunno sdfs-node` binary), so that it can be
/// paused with SIGSTOP: it accepts connections (the kernel does) but never answers.
struct ChildNode {
    child: tokio::process::Child,
}

impl ChildNode {
    fn start(id: &str, data: &std::path::Path, coordinators: &[String]) -> ChildNode {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idunno"))
            .args([
                "sdfs-node",
                "--id",
                id,
                "--listen",
                "127.0.0.1:0",
                "--coordinators",
            ])
            .arg(coordinators.join(","))
            .arg("--data")
            .arg(data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        ChildNode { child }
    }

    fn pause(&self) {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_storage_node_stalls_neither_puts_nor_reads_nor_repair() {
    // Liveness is kept from noticing the hang (a long node timeout), so the hung node stays
    // a chosen replica and the first one read: only the progress timeout can save the calls.
    let (mut cluster, dir) = cluster(3, 2, 0, |c| {
        c.storage_timeout_ms = 500;
        c.node_timeout_ms = 120_000;
    })
    .await;
    let addr = leader_addr(&cluster).await;
    let mut hung = ChildNode::start("s0", &dir.path().join("s0"), &cluster.coordinator_addrs());
    cluster.wait_for_nodes(3).await.unwrap();

    // Stored on all three (s0 sorts first, so reads start there).
    let before = content(800, 48 << 20);
    put(&addr, "hung/before.bin", before.clone()).await;
    eventually("before.bin on all three nodes", || async {
        (replicas(&addr, "hung/before.bin").await.replicas.len() == 3).then_some(())
    })
    .await;
    assert_eq!(
        replicas(&addr, "hung/before.bin").await.replicas[0].node,
        "s0"
    );

    // s0 hangs in the middle of serving a read: the read resumes on another replica.
    let resp = reqwest::get(url(&addr, "/v1/files/hung/before.bin"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        got.extend_from_slice(&futures::StreamExt::next(&mut body).await.unwrap().unwrap());
    }
    hung.pause();
    while let Some(piece) = futures::StreamExt::next(&mut body).await {
        got.extend_from_slice(&piece.expect("the read goes on"));
    }
    assert!(got == before, "the whole file, right");

    // A put with R=3 over [s0 (hung), s1, s2] completes on the other two.
    let during = content(801, 16 << 20);
    let v = put(&addr, "hung/during.bin", during.clone()).await;
    let mut on: Vec<&str> = v.replicas.iter().map(String::as_str).collect();
    on.sort();
    assert_eq!(on, vec!["s1", "s2"]);
    assert!(get(&addr, "hung/during.bin").await.1 == during);
    // A new read starting at the hung replica moves on.
    assert!(get(&addr, "hung/before.bin").await.1 == before);

    // Repair is not stuck behind copies to s0: a new node gets the third copy.
    cluster.add_storage_node().await.unwrap();
    let set = wait_replicated(&cluster, "hung/during.bin", 3).await;
    assert!(set.replicas.iter().all(|r| r.node != "s0"), "{set:?}");
    let _ = hung.child.kill().await;
    cluster.shutdown().await;
}
