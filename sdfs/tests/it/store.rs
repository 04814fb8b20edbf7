//! The blob store on its own (no HTTP), over real sled folders: round trips, ranges, hash
//! checks, deduplication, deletion, bit rot, restarts and crashes mid-upload.

use crate::common;

use common::random_bytes;
use idunno_sdfs::chunk::CHUNK_SIZE;
use idunno_sdfs::{BlobHash, BlobStore, ByteRange, SdfsError};

fn store_blob(store: &BlobStore, data: &[u8], piece: usize) -> BlobHash {
    let mut upload = store.upload().unwrap();
    for p in data.chunks(piece.max(1)) {
        upload.write(p).unwrap();
    }
    let stored = upload.finish(None).unwrap();
    assert_eq!(stored.size, data.len() as u64);
    BlobHash::parse(&stored.hash).unwrap()
}

fn read_all(store: &BlobStore, hash: &BlobHash) -> Vec<u8> {
    store
        .read(hash, None)
        .unwrap()
        .unwrap()
        .read_to_vec()
        .unwrap()
}

#[test]
fn blobs_of_every_size_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let sizes = [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 17,
        (1 << 20) + 3,
    ];
    let mut bytes = 0;
    for (i, size) in sizes.into_iter().enumerate() {
        let data = random_bytes(size, i as u64);
        // Odd write sizes: chunking must not depend on how the content arrives.
        let hash = store_blob(&store, &data, 7_777 + i);
        assert_eq!(hash, BlobHash::of(&data), "size {size}");
        assert_eq!(read_all(&store, &hash), data, "size {size}");
        bytes += size as u64;
    }
    let totals = store.totals();
    assert_eq!((totals.blobs, totals.bytes), (sizes.len() as u64, bytes));
    assert_eq!(store.list().unwrap().len(), sizes.len());
}

#[test]
fn ranges_read_exactly_the_bytes_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let data = random_bytes(4 * CHUNK_SIZE + 100, 1);
    let hash = store_blob(&store, &data, 1 << 20);
    let cs = CHUNK_SIZE as u64;
    for (start, end) in [
        (0, 1),
        (5, 10),
        (cs - 1, cs + 1),
        (cs, 2 * cs),
        (10, 3 * cs + 5),
        (4 * cs, 4 * cs + 100),
        (0, data.len() as u64),
    ] {
        let read = store
            .read(&hash, Some(ByteRange { start, end }))
            .unwrap()
            .unwrap();
        assert_eq!(read.remaining(), end - start);
        let got = read.read_to_vec().unwrap();
        assert_eq!(got, &data[start as usize..end as usize], "{start}..{end}");
    }
    let past = store.read(
        &hash,
        Some(ByteRange {
            start: 0,
            end: data.len() as u64 + 1,
        }),
    );
    assert!(matches!(past, Err(SdfsError::RangeNotSatisfiable { .. })));
}

#[test]
fn a_hash_mismatch_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let data = random_bytes(3 * CHUNK_SIZE + 5, 2);
    let wrong = BlobHash::of(b"something else");
    let mut upload = store.upload().unwrap();
    upload.write(&data).unwrap();
    let err = upload.finish(Some(&wrong)).unwrap_err();
    assert!(matches!(err, SdfsError::HashMismatch { .. }), "{err}");
    assert_eq!(store.totals().blobs, 0);
    assert_eq!(store.chunk_records(), 0);
    assert_eq!(store.content_files().unwrap(), 0);
    assert!(store.get(&BlobHash::of(&data)).unwrap().is_none());

    // The right hash is accepted.
    let mut upload = store.upload().unwrap();
    upload.write(&data).unwrap();
    let stored = upload.finish(Some(&BlobHash::of(&data))).unwrap();
    assert_eq!(stored.hash, BlobHash::of(&data).to_hex());
}

#[test]
fn storing_the_same_content_twice_keeps_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let data = random_bytes(2 * CHUNK_SIZE + 1, 3);
    let a = store_blob(&store, &data, 1000);
    let records = store.chunk_records();
    assert_eq!(records, 3);
    let b = store_blob(&store, &data, 99_999);
    assert_eq!(a, b);
    assert_eq!(store.chunk_records(), records);
    assert_eq!(store.content_files().unwrap(), 1);
    assert_eq!(store.totals().blobs, 1);
    assert_eq!(store.totals().bytes, data.len() as u64);
    assert_eq!(read_all(&store, &a), data);
}

#[test]
fn deleting_removes_the_blob_and_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let keep = store_blob(&store, &random_bytes(CHUNK_SIZE + 1, 4), 4096);
    let gone = store_blob(&store, &random_bytes(5 * CHUNK_SIZE, 5), 4096);
    assert!(store.delete(&gone).unwrap());
    assert!(!store.delete(&gone).unwrap());
    assert!(store.read(&gone, None).unwrap().is_none());
    assert_eq!(store.chunk_records(), 2);
    assert_eq!(store.content_files().unwrap(), 1);
    assert_eq!(store.totals().blobs, 1);
    let listed: Vec<String> = store.list().unwrap().into_iter().map(|b| b.hash).collect();
    assert_eq!(listed, vec![keep.to_hex()]);
}

#[test]
fn aborted_and_dropped_uploads_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let mut upload = store.upload().unwrap();
    upload.write(&random_bytes(3 * CHUNK_SIZE, 6)).unwrap();
    assert_eq!(store.chunk_records(), 3);
    upload.abort().unwrap();
    assert_eq!(store.chunk_records(), 0);

    let mut upload = store.upload().unwrap();
    upload.write(&random_bytes(2 * CHUNK_SIZE, 7)).unwrap();
    drop(upload);
    assert_eq!(store.chunk_records(), 0);
    assert_eq!(store.content_files().unwrap(), 0);
    assert_eq!(store.totals().blobs, 0);
}

#[test]
fn a_flipped_byte_fails_the_read_drops_the_blob_and_reports_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let data = random_bytes(4 * CHUNK_SIZE, 8);
    let hash = store_blob(&store, &data, 1 << 20);
    let other = store_blob(&store, &random_bytes(1000, 9), 1000);
    store
        .corrupt_byte_for_tests(&hash, 2 * CHUNK_SIZE as u64 + 10)
        .unwrap();

    // The chunks before the rotten one are fine, then the read fails: never wrong bytes.
    let mut good = Vec::new();
    let mut failure = None;
    for piece in store.read(&hash, None).unwrap().unwrap() {
        match piece {
            Ok(p) => good.extend_from_slice(&p),
            Err(e) => failure = Some(e),
        }
    }
    assert!(
        matches!(failure, Some(SdfsError::Corrupt { .. })),
        "{failure:?}"
    );
    assert_eq!(good, &data[..2 * CHUNK_SIZE]);

    assert!(store.get(&hash).unwrap().is_none());
    assert_eq!(store.stats().corrupt_chunks, 1);
    assert_eq!(store.totals().blobs, 1);
    assert_eq!(
        store.chunk_records(),
        1,
        "only the other blob's chunk is left"
    );
    let lost = store.lost().unwrap();
    assert_eq!(lost.hashes(), vec![hash]);
    assert_eq!(read_all(&store, &other).len(), 1000);

    // Reported and cleared; losing it again after the report is reported again.
    store.clear_lost(&lost).unwrap();
    assert!(store.lost().unwrap().is_empty());
    let again = store_blob(&store, &data, 1 << 20);
    let stale = {
        store.corrupt_byte_for_tests(&again, 0).unwrap();
        let snapshot = store.lost().unwrap();
        assert!(store
            .read(&again, None)
            .unwrap()
            .unwrap()
            .read_to_vec()
            .is_err());
        snapshot
    };
    store.clear_lost(&stale).unwrap();
    assert_eq!(store.lost().unwrap().hashes(), vec![again]);
}

#[test]
fn a_reopened_store_keeps_its_blobs_and_lost_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * CHUNK_SIZE + 3, 10);
    let (kept, rotten) = {
        let store = BlobStore::open(dir.path()).unwrap();
        let kept = store_blob(&store, &data, 50_000);
        let rotten = store_blob(&store, &random_bytes(100, 11), 100);
        store.corrupt_byte_for_tests(&rotten, 5).unwrap();
        assert!(store
            .read(&rotten, None)
            .unwrap()
            .unwrap()
            .read_to_vec()
            .is_err());
        store.close().unwrap();
        (kept, rotten)
    };
    let store = BlobStore::open(dir.path()).unwrap();
    assert_eq!(read_all(&store, &kept), data);
    assert_eq!(store.totals().blobs, 1);
    assert_eq!(store.totals().bytes, data.len() as u64);
    assert_eq!(store.lost().unwrap().hashes(), vec![rotten]);
}

#[test]
fn corrupting_a_closed_store_is_noticed_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(2 * CHUNK_SIZE, 12);
    let hash = {
        let store = BlobStore::open(dir.path()).unwrap();
        let hash = store_blob(&store, &data, 1 << 20);
        store.close().unwrap();
        hash
    };
    idunno_sdfs::corrupt_byte_for_tests(dir.path(), &hash.to_hex(), CHUNK_SIZE as u64).unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let err = store
        .read(&hash, None)
        .unwrap()
        .unwrap()
        .read_to_vec()
        .unwrap_err();
    assert!(matches!(err, SdfsError::Corrupt { .. }), "{err}");
    assert!(store.get(&hash).unwrap().is_none());
}

/// The child half of [`an_upload_cut_by_a_crash_is_deleted_on_reopen`]: when the variable is
/// set, stores part of a blob, makes it durable and dies without cleaning up.
#[test]
fn crash_helper() {
    let Ok(dir) = std::env::var("SDFS_CRASH_HELPER_DIR") else {
        return;
    };
    let store = BlobStore::open(&dir).unwrap();
    let mut upload = store.upload().unwrap();
    upload.write(&random_bytes(5 * CHUNK_SIZE + 1, 13)).unwrap();
    store.flush().unwrap();
    std::process::abort();
}

#[test]
fn an_upload_cut_by_a_crash_is_deleted_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(CHUNK_SIZE + 1, 14);
    let kept = {
        let store = BlobStore::open(dir.path()).unwrap();
        let kept = store_blob(&store, &data, 4096);
        store.close().unwrap();
        kept
    };
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::crash_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SDFS_CRASH_HELPER_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the helper must die mid-upload");

    let store = BlobStore::open(dir.path()).unwrap();
    assert_eq!(
        store.stats().orphan_chunks_deleted,
        5,
        "the helper's full chunks were on disk"
    );
    assert_eq!(
        store.chunk_records(),
        2,
        "only the finished blob's chunks are left"
    );
    assert_eq!(store.content_files().unwrap(), 1);
    assert_eq!(read_all(&store, &kept), data);
    assert_eq!(store.totals().blobs, 1);
}
