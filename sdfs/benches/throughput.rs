//! Throughput of one node over loopback HTTP: a blob streamed in with `PUT`, then out with
//! `GET`, timed end to end (durable on `201`, every chunk verified on the way out). By default
//! 32 MiB; `SDFS_BENCH_MB=256 cargo bench -p idunno-sdfs --bench throughput` gives the figures
//! quoted in the README (`SDFS_BENCH_ROUNDS` repeats, `SDFS_BENCH_CHUNK_KB` tries another
//! chunk size). A benchmark, not a test: under `cargo test --all-targets` (which runs bench
//! targets without `--bench`) it returns at once.

#[path = "../tests/it/common/mod.rs"]
mod common;

use std::time::Instant;

use common::*;
use futures::StreamExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "throughput: a benchmark; run it with `cargo bench -p idunno-sdfs --bench throughput`"
        );
        return;
    }
    let mb: usize = std::env::var("SDFS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let rounds: usize = std::env::var("SDFS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let chunk_kb: Option<u64> = std::env::var("SDFS_BENCH_CHUNK_KB")
        .ok()
        .and_then(|v| v.parse().ok());
    let configure = |c: &mut idunno_sdfs::NodeConfig| {
        if let Some(kb) = chunk_kb {
            c.chunk_kb = kb;
        }
    };
    let (dir, dir2, dir3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let node = start_node("s1", dir.path(), configure).await;
    let peer = start_node("s2", dir2.path(), configure).await;
    let client = http();
    for round in 0..rounds {
        let data = bytes::Bytes::from(random_bytes(mb << 20, round as u64));
        let hash = hash_hex(&data);

        // Sent as 1 MiB slices of one buffer: the client costs no copies.
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..data.len())
            .step_by(1 << 20)
            .map(|i| Ok(data.slice(i..(i + (1 << 20)).min(data.len()))))
            .collect();
        let started = Instant::now();
        let resp = client
            .put(url(&node.addr, "/internal/blobs"))
            .header("x-idunno-expect-hash", &hash)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let put = started.elapsed();

        let started = Instant::now();
        let resp = client
            .get(url(&node.addr, &format!("/internal/blobs/{hash}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut stream = resp.bytes_stream();
        let mut offset = 0;
        while let Some(piece) = stream.next().await {
            let piece = piece.unwrap();
            assert!(
                piece[..] == data[offset..offset + piece.len()],
                "content differs"
            );
            offset += piece.len();
        }
        assert_eq!(offset, data.len());
        let get = started.elapsed();

        // Re-replication: the peer copies the blob from the node.
        let started = Instant::now();
        let resp = client
            .post(url(&peer.addr, &format!("/internal/blobs/{hash}/fetch")))
            .json(&serde_json::json!({"from": node.addr}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let fetch = started.elapsed();

        let mbs = |d: std::time::Duration| data.len() as f64 / 1e6 / d.as_secs_f64();
        eprintln!(
            "{mb} MiB: PUT {:.0} MB/s ({:.2} s), GET {:.0} MB/s ({:.2} s), node-to-node fetch {:.0} MB/s ({:.2} s)",
            mbs(put),
            put.as_secs_f64(),
            mbs(get),
            get.as_secs_f64(),
            mbs(fetch),
            fetch.as_secs_f64()
        );
        let h = idunno_sdfs::BlobHash::parse(&hash).unwrap();
        assert!(node.store().delete(&h).unwrap());
        assert!(peer.store().delete(&h).unwrap());

        // A coordinator's write with R=3: the same stream to three nodes at once.
        let third = start_node("s3", dir3.path(), configure).await;
        let targets = [node.addr.clone(), peer.addr.clone(), third.addr.clone()];
        let puts = targets.iter().map(|addr| {
            let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = (0..data.len())
                .step_by(1 << 20)
                .map(|i| Ok(data.slice(i..(i + (1 << 20)).min(data.len()))))
                .collect();
            client
                .put(url(addr, "/internal/blobs"))
                .header("x-idunno-expect-hash", &hash)
                .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
                .send()
        });
        let started_puts = Instant::now();
        for resp in futures::future::join_all(puts).await {
            assert_eq!(resp.unwrap().status(), 201);
        }
        let r3 = started_puts.elapsed();
        eprintln!(
            "{mb} MiB to 3 nodes at once (R=3): {:.0} MB/s ({:.2} s)",
            mbs(r3),
            r3.as_secs_f64()
        );
        for n in [&node, &peer, &third] {
            assert!(n.store().delete(&h).unwrap());
        }
        third.shutdown().await.unwrap();
    }
    node.shutdown().await.unwrap();
    peer.shutdown().await.unwrap();
}
