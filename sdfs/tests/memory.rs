//! Streaming in bounded memory: a blob far larger than the node's buffers goes in and comes
//! back out while the process's peak memory grows by much less than the blob. (Alone in its
//! own test binary, so no other test's allocations count.)

#[path = "it/common/mod.rs"]
mod common;

use common::*;
use futures::StreamExt;

/// Content streamed through the node (MiB; `SDFS_MEMORY_MB` overrides it, e.g. 1024 for the
/// README's 1 GiB figure). Big enough to dwarf the node's buffers (transfer batches are
/// 1 MiB, the sled cache 16 MiB), small enough to keep the suite quick.
const DEFAULT_BLOB_MB: u64 = 192;
/// Allowed growth of the peak resident size during the round trip.
const ALLOWED_GROWTH: u64 = 64 << 20;

/// Pseudo-random content generated piece by piece (xorshift), never held whole.
fn pieces(total: u64) -> impl Iterator<Item = bytes::Bytes> {
    const PIECE: u64 = 256 << 10;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..total.div_ceil(PIECE)).map(move |i| {
        let len = PIECE.min(total - i * PIECE) as usize;
        let mut piece = Vec::with_capacity(len);
        while piece.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            piece.extend_from_slice(&state.to_le_bytes());
        }
        piece.truncate(len);
        bytes::Bytes::from(piece)
    })
}

/// Peak resident set size of this process (bytes), from /proc.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blob_streams_in_and_out_in_bounded_memory() {
    let blob: u64 = std::env::var("SDFS_MEMORY_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BLOB_MB)
        << 20;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node("s1", dir.path(), |c| c.cache_mb = 16).await;
    let client = http();
    let mut hasher = blake3::Hasher::new();
    for p in pieces(blob) {
        hasher.update(&p);
    }
    let hash = hasher.finalize().to_hex().to_string();
    let before = peak_rss();

    let body = reqwest::Body::wrap_stream(futures::stream::iter(
        pieces(blob).map(Ok::<_, std::io::Error>),
    ));
    let resp = client
        .put(url(&node.addr, "/internal/blobs"))
        .header("x-idunno-expect-hash", &hash)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let resp = client
        .get(url(&node.addr, &format!("/internal/blobs/{hash}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = blake3::Hasher::new();
    let mut len = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.unwrap();
        len += piece.len() as u64;
        received.update(&piece);
    }
    assert_eq!(len, blob);
    assert_eq!(received.finalize().to_hex().as_str(), hash);

    let growth = peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {} MiB (to {} MiB, client and node) for a {} MiB round trip",
        growth >> 20,
        peak_rss() >> 20,
        blob >> 20
    );
    assert!(
        growth < ALLOWED_GROWTH,
        "peak RSS grew by {} MiB streaming {} MiB",
        growth >> 20,
        blob >> 20
    );
    node.shutdown().await.unwrap();
}
