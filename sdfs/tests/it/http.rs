//! A storage node's HTTP API, against nodes started in-process on port 0 over real sled
//! folders: what a coordinator or worker sees when it stores, reads, copies and deletes blobs.

use std::time::Duration;

use crate::common::*;
use idunno_api::file::{BlobInfo, StoredBlob};
use idunno_sdfs::chunk::CHUNK_SIZE;
use idunno_sdfs::BlobHash;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_round_trip_through_put_and_get() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    for (i, size) in [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE + 1,
        (1 << 20) + 7,
        64 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let data = random_bytes(size, i as u64);
        let (status, body) = put_blob(&client, &node.addr, &data, None).await;
        assert_eq!(status, 201, "{body}");
        let stored: StoredBlob = serde_json::from_value(body).unwrap();
        assert_eq!(stored.hash, hash_hex(&data));
        assert_eq!(stored.size, size as u64);

        let resp = client
            .get(url(&node.addr, &format!("/internal/blobs/{}", stored.hash)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], size.to_string().as_str());
        assert_eq!(resp.headers()["x-idunno-hash"], stored.hash.as_str());
        let got = resp.bytes().await.unwrap();
        assert!(got == data, "size {size}: content differs");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn head_answers_the_size_without_content() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    let data = random_bytes(3 * CHUNK_SIZE, 1);
    put_blob(&client, &node.addr, &data, None).await;
    let resp = client
        .head(url(
            &node.addr,
            &format!("/internal/blobs/{}", hash_hex(&data)),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert!(resp.bytes().await.unwrap().is_empty());
    let missing = client
        .head(url(
            &node.addr,
            &format!("/internal/blobs/{}", hash_hex(b"no")),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn ranges_answer_206_with_exactly_those_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    let data = random_bytes(3 * CHUNK_SIZE + 10, 2);
    let (status, _) = put_blob(&client, &node.addr, &data, None).await;
    assert_eq!(status, 201);
    let blob_url = url(&node.addr, &format!("/internal/blobs/{}", hash_hex(&data)));
    let n = data.len();
    let cs = CHUNK_SIZE;
    for (range, start, end) in [
        ("bytes=0-0".to_string(), 0, 1),
        (format!("bytes={}-{}", cs - 2, cs + 2), cs - 2, cs + 3),
        (format!("bytes={}-", 2 * cs + 1), 2 * cs + 1, n),
        ("bytes=-10".to_string(), n - 10, n),
        (format!("bytes=5-{}", n + 100), 5, n),
    ] {
        let resp = client
            .get(&blob_url)
            .header("range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes {}-{}/{n}", start, end - 1).as_str()
        );
        assert_eq!(resp.bytes().await.unwrap(), &data[start..end], "{range}");
    }
    let resp = client
        .get(&blob_url)
        .header("range", format!("bytes={n}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes */{n}").as_str()
    );
    assert_error(resp, 416, "range_not_satisfiable").await;
    for bad in ["bytes=9-3", "lines=1-2", "bytes=0-1,5-6", "bytes=x-"] {
        let resp = client
            .get(&blob_url)
            .header("range", bad)
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, "bad_request").await;
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_expected_hash_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    let data = random_bytes(2 * CHUNK_SIZE + 3, 3);
    let wrong = hash_hex(b"other content");
    let resp = client
        .put(url(&node.addr, "/internal/blobs"))
        .header("x-idunno-expect-hash", &wrong)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 400, "hash_mismatch").await;
    assert!(body["error"].as_str().unwrap().contains(&hash_hex(&data)));
    assert_eq!(node.store().totals().blobs, 0);
    assert_eq!(node.store().chunk_records(), 0);

    let (status, body) = put_blob(&client, &node.addr, &data, Some(&hash_hex(&data))).await;
    assert_eq!(status, 201, "{body}");
    let resp = client
        .put(url(&node.addr, "/internal/blobs"))
        .header("x-idunno-expect-hash", "not-a-hash")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "bad_request").await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_content_is_stored_once_and_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    let data = random_bytes(CHUNK_SIZE * 2, 4);
    let small = random_bytes(10, 5);
    for _ in 0..3 {
        let (status, body) = put_blob(&client, &node.addr, &data, None).await;
        assert_eq!(status, 201);
        assert_eq!(body["hash"], hash_hex(&data));
    }
    put_blob(&client, &node.addr, &small, None).await;
    let list: Vec<BlobInfo> = client
        .get(url(&node.addr, "/internal/blobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut got: Vec<(String, u64)> = list.into_iter().map(|b| (b.hash, b.size)).collect();
    got.sort();
    let mut want = vec![(hash_hex(&data), data.len() as u64), (hash_hex(&small), 10)];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(node.store().chunk_records(), 3);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn deleted_blobs_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    let data = random_bytes(CHUNK_SIZE + 5, 6);
    put_blob(&client, &node.addr, &data, None).await;
    let blob_url = url(&node.addr, &format!("/internal/blobs/{}", hash_hex(&data)));
    let resp = client.delete(&blob_url).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_error(
        client.get(&blob_url).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        client.delete(&blob_url).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_eq!(node.store().chunk_records(), 0);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_conditional_delete_of_a_blob_stored_again_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    let data = random_bytes(CHUNK_SIZE * 2 + 3, 11);
    let blob_url = url(&node.addr, &format!("/internal/blobs/{}", hash_hex(&data)));
    let stamp_of = |resp: &reqwest::Response| -> u64 {
        resp.headers()["x-idunno-stamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    put_blob(&client, &node.addr, &data, None).await;
    let first = stamp_of(&client.head(&blob_url).send().await.unwrap());
    // A put of the same content (deduplicated) stores it again: a new stamp.
    assert_eq!(put_blob(&client, &node.addr, &data, None).await.0, 201);
    let second = stamp_of(&client.head(&blob_url).send().await.unwrap());
    assert_ne!(first, second);
    let listed: Vec<BlobInfo> = client
        .get(url(&node.addr, "/internal/blobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0].stamp, second);

    // A delete decided before that second store is refused, and the blob stays whole.
    let stale = client
        .delete(format!("{blob_url}?stamp={first}"))
        .send()
        .await
        .unwrap();
    assert_error(stale, 412, "stamp_changed").await;
    assert_eq!(
        get_blob(&client, &node.addr, &hash_hex(&data))
            .await
            .unwrap(),
        data
    );
    let bad = client
        .delete(format!("{blob_url}?stamp=x"))
        .send()
        .await
        .unwrap();
    assert_error(bad, 400, "bad_request").await;

    // With the current stamp it goes.
    let resp = client
        .delete(format!("{blob_url}?stamp={second}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_error(
        client.get(&blob_url).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_eq!(node.store().chunk_records(), 0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fetches_a_blob_from_another_node() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret = |c: &mut idunno_sdfs::NodeConfig| c.cluster_secret = Some("s3cret".into());
    let a = start_node("s1", d1.path(), secret).await;
    let b = start_node("s2", d2.path(), secret).await;
    let client = reqwest::Client::builder()
        .default_headers(
            [(
                "x-idunno-secret".parse().unwrap(),
                "s3cret".parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let data = random_bytes(5 * CHUNK_SIZE + 11, 7);
    let hash = hash_hex(&data);
    let (status, _) = put_blob(&client, &a.addr, &data, None).await;
    assert_eq!(status, 201);

    let fetch_url = url(&b.addr, &format!("/internal/blobs/{hash}/fetch"));
    let resp = client
        .post(&fetch_url)
        .json(&json!({"from": a.addr}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let stored: StoredBlob = resp.json().await.unwrap();
    assert_eq!(
        (stored.hash.as_str(), stored.size),
        (hash.as_str(), data.len() as u64)
    );
    assert_eq!(get_blob(&client, &b.addr, &hash).await.unwrap(), data);
    // Fetching what it already has is a no-op success.
    let again = client
        .post(&fetch_url)
        .json(&json!({"from": a.addr}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(b.store().chunk_records(), 6);

    // A blob the source does not have: 502, nothing kept.
    let absent = hash_hex(b"absent");
    let resp = client
        .post(url(&b.addr, &format!("/internal/blobs/{absent}/fetch")))
        .json(&json!({"from": a.addr}))
        .send()
        .await
        .unwrap();
    let body = assert_error(resp, 502, "bad_gateway").await;
    assert!(body["error"].as_str().unwrap().contains("404"), "{body}");
    // A source nobody listens on.
    let resp = client
        .post(url(&b.addr, &format!("/internal/blobs/{absent}/fetch")))
        .json(&json!({"from": "127.0.0.1:1"}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 502, "bad_gateway").await;
    assert_eq!(b.store().totals().blobs, 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_fails_the_transfer_and_the_blob_is_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    // Large enough that the rotten chunk is read after the response has started.
    let data = random_bytes(6 << 20, 8);
    let hash = hash_hex(&data);
    put_blob(&client, &node.addr, &data, None).await;
    let h = BlobHash::parse(&hash).unwrap();
    node.store()
        .corrupt_byte_for_tests(&h, (4 << 20) + 3)
        .unwrap();

    let resp = client
        .get(url(&node.addr, &format!("/internal/blobs/{hash}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the rot is found mid-transfer");
    let body = resp.bytes().await;
    assert!(
        body.is_err(),
        "the reader must see a failed transfer, never wrong bytes"
    );

    assert_error(
        client
            .get(url(&node.addr, &format!("/internal/blobs/{hash}")))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_eq!(node.store().lost().unwrap().hashes(), vec![h]);
    let metrics = client
        .get(url(&node.addr, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("idunno_sdfs_corrupt_chunks_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("idunno_sdfs_blobs 0\n"), "{metrics}");

    // Rot in the first chunk is found before the response starts: a clean JSON error.
    let small = random_bytes(1000, 9);
    put_blob(&client, &node.addr, &small, None).await;
    let hs = BlobHash::parse(&hash_hex(&small)).unwrap();
    node.store().corrupt_byte_for_tests(&hs, 999).unwrap();
    let resp = client
        .get(url(&node.addr, &format!("/internal/blobs/{hs}")))
        .send()
        .await
        .unwrap();
    assert_error(resp, 500, "corrupt").await;
    assert_eq!(node.store().lost().unwrap().hashes().len(), 2);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let mut tcp = tokio::net::TcpStream::connect(&node.addr).await.unwrap();
    let head = format!(
        "PUT /internal/blobs HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        10 << 20
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&random_bytes(3 << 20, 10)).await.unwrap();
    tcp.flush().await.unwrap();
    // Wait until the node has stored some of it, then vanish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.store().chunk_records() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tcp);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.store().chunk_records() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload's chunks stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.store().totals().blobs, 0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_whose_body_fails_leaves_nothing() {
    // How a coordinator's replica stream ends when its put is given up: no Content-Length,
    // some pieces, then an error instead of the end of the body.
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let pieces = (0..40)
        .map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(random_bytes(64 << 10, 20 + i))))
        .chain(std::iter::once(Err(std::io::Error::other("put abandoned"))));
    let sent = http()
        .put(url(&node.addr, "/internal/blobs"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await;
    assert!(sent.is_err() || sent.unwrap().status() == 400);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.store().content_files().unwrap() != 0 || node.store().chunk_records() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload's file and chunks stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.store().totals().blobs, 0);
    assert_eq!(node.store().list().unwrap(), vec![]);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |_| {}).await;
    let client = http();
    let base = |p: &str| url(&node.addr, p);
    let cases = [
        (client.get(base("/internal/blobs/xyz")), 400, "bad_request"),
        (
            client.get(base(&format!("/internal/blobs/{}", "a".repeat(63)))),
            400,
            "bad_request",
        ),
        (
            client.delete(base("/internal/blobs/zz")),
            400,
            "bad_request",
        ),
        (
            client.get(base(&format!("/internal/blobs/{}", "a".repeat(64)))),
            404,
            "not_found",
        ),
        (
            client
                .post(base(&format!("/internal/blobs/{}/fetch", "a".repeat(64))))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "bad_request",
        ),
        (
            client
                .post(base(&format!("/internal/blobs/{}/fetch", "a".repeat(64))))
                .json(&json!({"source": "x"})),
            400,
            "bad_request",
        ),
        (
            client
                .post(base(&format!("/internal/blobs/{}/fetch", "a".repeat(64))))
                .json(&json!({"from": "no port/x"})),
            400,
            "bad_request",
        ),
        (
            client
                .post(base(&format!("/internal/blobs/{}/fetch", "a".repeat(64))))
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (client.get(base("/nope")), 404, "not_found"),
        (
            client.post(base("/internal/blobs")),
            405,
            "method_not_allowed",
        ),
    ];
    for (req, status, code) in cases {
        assert_error(req.send().await.unwrap(), status, code).await;
    }
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_cluster_secret_guards_internal_routes_only() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |c| c.cluster_secret = Some("k".into())).await;
    let client = http();
    for secret in [None, Some("wrong")] {
        let mut req = client.get(url(&node.addr, "/internal/blobs"));
        if let Some(s) = secret {
            req = req.header("x-idunno-secret", s);
        }
        assert_error(req.send().await.unwrap(), 403, "forbidden").await;
    }
    let ok = client
        .get(url(&node.addr, "/internal/blobs"))
        .header("x-idunno-secret", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for open in ["/healthz", "/metrics"] {
        let resp = client.get(url(&node.addr, open)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{open}");
    }
    node.shutdown().await.unwrap();
}
