//! The blob store: immutable, content-addressed blobs. Its records are in one sled database at
//! `<data>/blobs`; each upload's bytes are in one content file under `<data>/content`
//! (`content.rs`). It owns the layout, crash recovery, deduplication, deletion and the "lost"
//! set of blobs found corrupt. Writing is in `upload.rs`, reading in `blob_read.rs`; nothing
//! here speaks HTTP. Every method blocks (disk I/O): async code calls them from
//! `spawn_blocking` (see `transfer.rs`).
//!
//! sled trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `blobs` | content hash (32 bytes) | [`BlobMeta`] |
//! | `sums` | upload id, chunk index (big-endian) | the chunk's BLAKE3 |
//! | `pending` | upload id | empty: an upload no blob owns yet (in progress) or any more (being deleted) |
//! | `lost` | content hash | a mark: dropped as corrupt, not yet reported |
//!
//! Why the bytes are not in sled: measured on this project's 2-core machines, sled 0.34
//! wrote every byte ~3 times (log, then page rewrites), kept ~460 MiB resident while
//! streaming a 1–2 GiB blob whatever its cache size, and does not fsync the side files it
//! keeps large pages in. A content file is written once and fsynced before the blob is
//! acknowledged; see the crate README.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use idunno_api::file::BlobInfo;

use crate::blob_read::BlobRead;
use crate::chunk::{self, ChunkFault, CHUNK_SIZE};
use crate::content::ContentDir;
use crate::error::SdfsError;
use crate::hash::BlobHash;
use crate::meta::{now_ms, BlobMeta};
use crate::sled_lock::wait_until_unlocked;
use crate::upload::Upload;
use idunno_api::range::ByteRange;

/// The folder, inside a node's data folder, that holds the sled database.
pub const DB_FOLDER: &str = "blobs";

/// The largest chunk size accepted (a read buffers at least one chunk).
const MAX_CHUNK_SIZE: usize = 16 << 20;

/// How long opening waits for a previous handle on the same folder (in this process or a
/// dying one) to let go of sled's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Tuning of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Content bytes per chunk for new blobs (existing blobs keep theirs).
    pub chunk_size: usize,
    /// sled's page cache in bytes (records and checksums only; content is read from files
    /// through the OS page cache).
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunk_size: CHUNK_SIZE,
            cache_bytes: 16 << 20,
        }
    }
}

/// How much a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub blobs: u64,
    pub bytes: u64,
}

/// Counters since the store was opened, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Content bytes of newly stored blobs (deduplicated writes do not count).
    pub bytes_written: u64,
    /// Verified content bytes handed to readers.
    pub bytes_read: u64,
    /// Chunks that failed verification.
    pub corrupt_chunks: u64,
    /// Blobs dropped because a chunk failed verification.
    pub blobs_dropped: u64,
    /// Chunk checksums of interrupted uploads (and deletions) that opening the store deleted.
    pub orphan_chunks_deleted: u64,
}

/// Blobs dropped as corrupt and not yet reported, with the marks that let
/// [`BlobStore::clear_lost`] forget exactly what was reported.
#[derive(Debug, Clone, Default)]
pub struct LostBlobs {
    entries: Vec<(BlobHash, sled::IVec)>,
}

impl LostBlobs {
    pub fn hashes(&self) -> Vec<BlobHash> {
        self.entries.iter().map(|(h, _)| *h).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A handle on an open store; cheap to clone. The database closes when the last clone is
/// dropped ([`BlobStore::close`] waits for that).
#[derive(Clone)]
pub struct BlobStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db_path: PathBuf,
    pub(crate) db: sled::Db,
    pub(crate) content: ContentDir,
    pub(crate) blobs: sled::Tree,
    pub(crate) sums: sled::Tree,
    pub(crate) pending: sled::Tree,
    lost: sled::Tree,
    pub(crate) chunk_size: usize,
    /// Serialises changes of the `blobs` tree (commit, delete, drop), so the totals stay exact
    /// and each chunk set is deleted once.
    meta_lock: Mutex<()>,
    blob_count: AtomicU64,
    byte_count: AtomicU64,
    bytes_written: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    corrupt_chunks: AtomicU64,
    blobs_dropped: AtomicU64,
    orphan_chunks_deleted: AtomicU64,
}

/// What a conditional delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// The blob was not there.
    Absent,
    /// The blob was stored again since: it now has this stamp, and it was kept.
    Changed {
        stamp: u64,
    },
}

/// What committing an upload's metadata did.
pub(crate) enum Committed {
    /// The blob is new.
    Stored,
    /// The blob was already there; the upload's file and checksums were deleted.
    Duplicate,
}

impl BlobStore {
    /// Opens (or creates) the store in `data_dir` (`blobs/` and `content/`), deleting what
    /// uploads and deletions that a crash interrupted left behind.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<BlobStore, SdfsError> {
        BlobStore::open_with(data_dir, StoreOptions::default())
    }

    /// [`BlobStore::open`] with explicit options.
    pub fn open_with(
        data_dir: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<BlobStore, SdfsError> {
        if options.chunk_size == 0 || options.chunk_size > MAX_CHUNK_SIZE {
            return Err(SdfsError::Config(format!(
                "chunk size must be 1..={MAX_CHUNK_SIZE} bytes, not {}",
                options.chunk_size
            )));
        }
        let db_path = data_dir.as_ref().join(DB_FOLDER);
        std::fs::create_dir_all(&db_path)?;
        let content = ContentDir::open(data_dir.as_ref())?;
        wait_until_unlocked(&db_path.join("db"), LOCK_WAIT)?;
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(options.cache_bytes)
            // Every write that is acknowledged flushes; a timer flush would only add work.
            .flush_every_ms(None)
            .open()?;
        let store = BlobStore {
            inner: Arc::new(Inner {
                content,
                blobs: db.open_tree("blobs")?,
                sums: db.open_tree("sums")?,
                pending: db.open_tree("pending")?,
                lost: db.open_tree("lost")?,
                db,
                db_path,
                chunk_size: options.chunk_size,
                meta_lock: Mutex::new(()),
                blob_count: AtomicU64::new(0),
                byte_count: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                bytes_read: AtomicU64::new(0),
                corrupt_chunks: AtomicU64::new(0),
                blobs_dropped: AtomicU64::new(0),
                orphan_chunks_deleted: AtomicU64::new(0),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// Counts the blobs and deletes the files and checksums that no blob owns: those of
    /// uploads and deletions a crash interrupted.
    fn recover(&self) -> Result<(), SdfsError> {
        let inner = &self.inner;
        let mut owned = HashSet::new();
        let (mut blobs, mut bytes) = (0u64, 0u64);
        let mut changed = false;
        for item in inner.blobs.iter() {
            let (key, value) = item?;
            match BlobMeta::decode(&value) {
                Some(meta) => {
                    owned.insert(meta.upload);
                    blobs += 1;
                    bytes += meta.size;
                }
                None => {
                    // Unreadable metadata: the blob cannot be served, so it is lost.
                    tracing::warn!(key = ?key, "unreadable blob metadata; dropping it");
                    inner.blobs.remove(&key)?;
                    if let Some(hash) = BlobHash::from_slice(&key) {
                        self.mark_lost(&hash)?;
                    }
                    changed = true;
                }
            }
        }
        for item in inner.pending.iter() {
            let (key, _) = item?;
            let upload = <[u8; 8]>::try_from(&key[..]).map(u64::from_be_bytes).ok();
            if let Some(upload) = upload.filter(|u| !owned.contains(u)) {
                inner.content.remove(upload)?;
                let removed = self.remove_sums_by_scan(upload)?;
                inner
                    .orphan_chunks_deleted
                    .fetch_add(removed as u64, Ordering::Relaxed);
                tracing::info!(upload, chunks = removed, "deleted an interrupted upload");
            }
            inner.pending.remove(&key)?;
            changed = true;
        }
        // A file whose pending mark did not reach the disk before a crash.
        for upload in inner.content.uploads()? {
            if !owned.contains(&upload) {
                inner.content.remove(upload)?;
                self.remove_sums_by_scan(upload)?;
                tracing::info!(upload, "deleted an unowned content file");
                changed = true;
            }
        }
        inner.blob_count.store(blobs, Ordering::Relaxed);
        inner.byte_count.store(bytes, Ordering::Relaxed);
        if changed {
            inner.db.flush()?;
        }
        Ok(())
    }

    /// Starts an upload. Its content is invisible until [`Upload::finish`] stores the blob.
    pub fn upload(&self) -> Result<Upload, SdfsError> {
        Upload::begin(self.clone())
    }

    /// The metadata of a stored blob.
    pub fn get(&self, hash: &BlobHash) -> Result<Option<BlobMeta>, SdfsError> {
        match self.inner.blobs.get(hash.as_bytes())? {
            Some(v) => Ok(Some(self.decode_meta(hash, &v)?)),
            None => Ok(None),
        }
    }

    /// A chunk-verified reader of a stored blob's bytes, or of `range` of them; `None` if the
    /// blob is absent. A range must lie inside the blob ([`ByteRange::parse_header`] ensures that).
    pub fn read(
        &self,
        hash: &BlobHash,
        range: Option<ByteRange>,
    ) -> Result<Option<BlobRead>, SdfsError> {
        let Some(meta) = self.get(hash)? else {
            return Ok(None);
        };
        let range = range.unwrap_or(ByteRange {
            start: 0,
            end: meta.size,
        });
        if range.start > range.end || range.end > meta.size {
            return Err(SdfsError::RangeNotSatisfiable { size: meta.size });
        }
        Ok(Some(BlobRead::new(self.clone(), *hash, meta, range)))
    }

    /// Handles a chunk of `hash` that cannot be served. A chunk missing because the blob was
    /// deleted meanwhile is [`SdfsError::NotFound`]; anything else is rot: the whole blob is
    /// dropped and marked lost, and the caller gets [`SdfsError::Corrupt`].
    pub(crate) fn chunk_fault(
        &self,
        hash: &BlobHash,
        meta: &BlobMeta,
        index: u64,
        fault: ChunkFault,
    ) -> SdfsError {
        match self.get(hash) {
            Ok(Some(current)) if current == *meta => {}
            Ok(_) if fault == ChunkFault::Missing => {
                return SdfsError::NotFound(format!("blob {hash} was deleted while it was read"))
            }
            Ok(_) => {}
            Err(e) => return e,
        }
        self.inner.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%hash, index, ?fault, "corrupt chunk; dropping the blob");
        if let Err(e) = self.drop_corrupt(hash, meta) {
            tracing::warn!(%hash, error = %e, "could not drop a corrupt blob");
        }
        SdfsError::Corrupt {
            hash: hash.to_hex(),
        }
    }

    /// Deletes a blob; `false` if it was not there. Durable when it returns.
    pub fn delete(&self, hash: &BlobHash) -> Result<bool, SdfsError> {
        let meta = {
            let _guard = self.lock_meta();
            let Some(meta) = self.get(hash)? else {
                return Ok(false);
            };
            self.unlink(hash, &meta)?;
            meta
        };
        self.remove_owned_chunks(&meta)?;
        self.inner.db.flush()?;
        Ok(true)
    }

    /// Deletes a blob only if its stamp is still `stamp`: one stored again since the caller
    /// looked (a put of the same content, which will refer to it) is kept. Serialised with
    /// commits, so a store of the same content lands either before (and the delete is
    /// refused) or after (and stores the blob anew). Durable when it returns.
    pub fn delete_if(&self, hash: &BlobHash, stamp: u64) -> Result<Deleted, SdfsError> {
        let meta = {
            let _guard = self.lock_meta();
            let Some(meta) = self.get(hash)? else {
                return Ok(Deleted::Absent);
            };
            if meta.stamp != stamp {
                return Ok(Deleted::Changed { stamp: meta.stamp });
            }
            self.unlink(hash, &meta)?;
            meta
        };
        self.remove_owned_chunks(&meta)?;
        self.inner.db.flush()?;
        Ok(Deleted::Deleted)
    }

    /// Marks a blob as stored again (a copy asked for that is already here) without
    /// touching its content: a new stamp and creation time. `None` if it is absent.
    pub fn touch(&self, hash: &BlobHash) -> Result<Option<BlobMeta>, SdfsError> {
        let stamp = self.inner.db.generate_id()?;
        let _guard = self.lock_meta();
        let Some(existing) = self.get(hash)? else {
            return Ok(None);
        };
        let touched = BlobMeta {
            created_ms: now_ms(),
            stamp,
            ..existing
        };
        self.inner
            .blobs
            .insert(hash.as_bytes(), &touched.encode()[..])?;
        Ok(Some(touched))
    }

    /// Every stored blob.
    pub fn list(&self) -> Result<Vec<BlobInfo>, SdfsError> {
        let now = now_ms();
        let mut out = Vec::new();
        for item in self.inner.blobs.iter() {
            let (key, value) = item?;
            let (Some(hash), Some(meta)) = (BlobHash::from_slice(&key), BlobMeta::decode(&value))
            else {
                continue;
            };
            out.push(BlobInfo {
                hash: hash.to_hex(),
                size: meta.size,
                age_ms: now.saturating_sub(meta.created_ms),
                stamp: meta.stamp,
            });
        }
        Ok(out)
    }

    /// How many blobs and content bytes the store holds.
    pub fn totals(&self) -> Totals {
        Totals {
            blobs: self.inner.blob_count.load(Ordering::Relaxed),
            bytes: self.inner.byte_count.load(Ordering::Relaxed),
        }
    }

    /// Chunk checksums stored: those of every blob plus those of uploads in progress. It
    /// reads the whole tree — for tests and diagnostics ("nothing left behind").
    pub fn chunk_records(&self) -> usize {
        self.inner.sums.len()
    }

    /// Content files on disk: one per blob plus one per upload in progress. For tests and
    /// diagnostics.
    pub fn content_files(&self) -> Result<usize, SdfsError> {
        Ok(self.inner.content.uploads()?.len())
    }

    /// Counters since opening.
    pub fn stats(&self) -> StoreStats {
        let i = &self.inner;
        StoreStats {
            bytes_written: i.bytes_written.load(Ordering::Relaxed),
            bytes_read: i.bytes_read.load(Ordering::Relaxed),
            corrupt_chunks: i.corrupt_chunks.load(Ordering::Relaxed),
            blobs_dropped: i.blobs_dropped.load(Ordering::Relaxed),
            orphan_chunks_deleted: i.orphan_chunks_deleted.load(Ordering::Relaxed),
        }
    }

    /// Blobs dropped as corrupt since they were last cleared (survives restarts).
    pub fn lost(&self) -> Result<LostBlobs, SdfsError> {
        let mut entries = Vec::new();
        for item in self.inner.lost.iter() {
            let (key, mark) = item?;
            if let Some(hash) = BlobHash::from_slice(&key) {
                entries.push((hash, mark));
            }
        }
        Ok(LostBlobs { entries })
    }

    /// Forgets lost blobs once they were reported; a blob lost again since `reported` was
    /// read stays in the set.
    pub fn clear_lost(&self, reported: &LostBlobs) -> Result<(), SdfsError> {
        for (hash, mark) in &reported.entries {
            // A changed mark means it was lost again: keep it for the next report.
            let _ = self
                .inner
                .lost
                .compare_and_swap(hash.as_bytes(), Some(mark), None::<&[u8]>)?;
        }
        Ok(())
    }

    /// Makes every change so far durable (blocking).
    pub fn flush(&self) -> Result<(), SdfsError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Makes every change so far durable, without blocking the async threads. Not through
    /// sled's `flush_async`, which waits on sled's own small thread pool for writes queued
    /// behind it there and, with a few flushes at once, starves it for good (sled 0.34,
    /// issue #1308): the flush runs on tokio's blocking pool instead.
    pub async fn flush_async(&self) -> Result<(), SdfsError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush()).await??;
        Ok(())
    }

    /// Flushes, drops this handle and waits until sled has released the database, so the
    /// folder can be opened again. Fails if another clone of this store is still alive.
    pub fn close(self) -> Result<(), SdfsError> {
        self.flush()?;
        let lock_file = self.inner.db_path.join("db");
        drop(self);
        wait_until_unlocked(&lock_file, LOCK_WAIT)
    }

    /// **For tests only: simulated bit rot.** Flips every bit of the content byte at
    /// `offset` of a stored blob, in its content file on disk, leaving the chunk's checksum as
    /// it was. The next read of that chunk fails verification, exactly as if the disk had
    /// rotted. (On a closed store, use the free function [`corrupt_byte_for_tests`].)
    #[cfg(any(test, feature = "test-util"))]
    pub fn corrupt_byte_for_tests(&self, hash: &BlobHash, offset: u64) -> Result<(), SdfsError> {
        use std::os::unix::fs::FileExt;
        let meta = self
            .get(hash)?
            .ok_or_else(|| SdfsError::NotFound(format!("no blob {hash}")))?;
        if offset >= meta.size {
            return Err(SdfsError::BadRequest(format!(
                "offset {offset} is past the blob's {} bytes",
                meta.size
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.inner.content.path_of(meta.upload))?;
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, offset)?;
        byte[0] ^= 0xff;
        file.write_all_at(&byte, offset)?;
        file.sync_all()?;
        Ok(())
    }

    /// **For tests only: a node serving wrong bytes that pass its own checks** (a bug, or a
    /// checksum collision). Flips the content byte at `offset` of a stored blob and rewrites
    /// that chunk's checksum to match, so the node serves the changed chunk as good: only the
    /// reader's whole-content hash can tell.
    #[cfg(any(test, feature = "test-util"))]
    pub fn forge_byte_for_tests(&self, hash: &BlobHash, offset: u64) -> Result<(), SdfsError> {
        use std::os::unix::fs::FileExt;
        // Checks that the blob exists and holds `offset`.
        self.corrupt_byte_for_tests(hash, offset)?;
        let meta = self
            .get(hash)?
            .ok_or_else(|| SdfsError::NotFound(format!("no blob {hash}")))?;
        let index = offset / u64::from(meta.chunk_size);
        let mut chunk = vec![0u8; meta.chunk_len(index)];
        let file = std::fs::File::open(self.inner.content.path_of(meta.upload))?;
        file.read_exact_at(&mut chunk, index * u64::from(meta.chunk_size))?;
        let index = u32::try_from(index)
            .map_err(|_| SdfsError::BadRequest("the blob is too large".into()))?;
        self.inner.sums.insert(
            chunk::chunk_key(meta.upload, index),
            blake3::hash(&chunk).as_bytes(),
        )?;
        self.inner.db.flush()?;
        Ok(())
    }

    // ---- internals shared with uploads and readers ----

    /// Records a finished upload's blob, or notices it is a duplicate and deletes the
    /// upload's file and checksums. Not flushed.
    pub(crate) fn commit(&self, hash: &BlobHash, meta: &BlobMeta) -> Result<Committed, SdfsError> {
        let guard = self.lock_meta();
        if let Some(existing) = self.get(hash)? {
            // Stored again: it counts as new for garbage collection, whose grace period keeps
            // blobs of puts that have not committed their namespace entry yet.
            // Its new stamp makes a conditional delete issued before this store fail.
            let refreshed = BlobMeta {
                created_ms: meta.created_ms,
                stamp: meta.stamp,
                ..existing
            };
            self.inner
                .blobs
                .insert(hash.as_bytes(), &refreshed.encode()[..])?;
            drop(guard);
            self.discard_upload(meta.upload, meta.chunk_count())?;
            return Ok(Committed::Duplicate);
        }
        self.inner
            .blobs
            .insert(hash.as_bytes(), &meta.encode()[..])?;
        // From here the chunks are owned, so this is not an error for the upload: a leftover
        // pending mark of an owned upload is simply dropped by recovery.
        if let Err(e) = self.inner.pending.remove(meta.upload.to_be_bytes()) {
            tracing::warn!(upload = meta.upload, error = %e, "could not clear a pending mark");
        }
        self.inner.blob_count.fetch_add(1, Ordering::Relaxed);
        self.inner
            .byte_count
            .fetch_add(meta.size, Ordering::Relaxed);
        self.inner
            .bytes_written
            .fetch_add(meta.size, Ordering::Relaxed);
        Ok(Committed::Stored)
    }

    /// Deletes the file and the `chunks` checksums of an upload, then its pending mark.
    pub(crate) fn discard_upload(&self, upload: u64, chunks: u64) -> Result<(), SdfsError> {
        self.inner.content.remove(upload)?;
        self.remove_sums(upload, chunks)?;
        self.inner.pending.remove(upload.to_be_bytes())?;
        Ok(())
    }

    /// Removes a blob whose chunk failed verification, if it is still the same blob, and
    /// marks it lost.
    fn drop_corrupt(&self, hash: &BlobHash, meta: &BlobMeta) -> Result<(), SdfsError> {
        {
            let _guard = self.lock_meta();
            if self.get(hash)? != Some(*meta) {
                return Ok(()); // already dropped, or deleted and stored anew
            }
            self.unlink(hash, meta)?;
            self.mark_lost(hash)?;
        }
        self.inner.blobs_dropped.fetch_add(1, Ordering::Relaxed);
        self.remove_owned_chunks(meta)?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Takes a blob out of the `blobs` tree, marking its chunks pending first so a crash
    /// before they are deleted leaves nothing behind. Called under the metadata lock.
    fn unlink(&self, hash: &BlobHash, meta: &BlobMeta) -> Result<(), SdfsError> {
        self.inner
            .pending
            .insert(meta.upload.to_be_bytes(), &[][..])?;
        self.inner.blobs.remove(hash.as_bytes())?;
        self.inner.blob_count.fetch_sub(1, Ordering::Relaxed);
        self.inner
            .byte_count
            .fetch_sub(meta.size, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes an unlinked blob's file and checksums, then its pending mark.
    fn remove_owned_chunks(&self, meta: &BlobMeta) -> Result<(), SdfsError> {
        self.discard_upload(meta.upload, meta.chunk_count())
    }

    fn mark_lost(&self, hash: &BlobHash) -> Result<(), SdfsError> {
        let mark = self.inner.db.generate_id()?;
        self.inner
            .lost
            .insert(hash.as_bytes(), &mark.to_be_bytes()[..])?;
        Ok(())
    }

    /// Removes checksums 0..count of an upload in one atomic batch.
    fn remove_sums(&self, upload: u64, count: u64) -> Result<(), SdfsError> {
        let mut batch = sled::Batch::default();
        for index in 0..count.min(u64::from(u32::MAX) + 1) {
            batch.remove(&chunk::chunk_key(upload, index as u32)[..]);
        }
        self.inner.sums.apply_batch(batch)?;
        Ok(())
    }

    /// Removes every checksum of an upload whose chunk count is unknown (crash recovery).
    fn remove_sums_by_scan(&self, upload: u64) -> Result<usize, SdfsError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for key in self
            .inner
            .sums
            .scan_prefix(chunk::upload_prefix(upload))
            .keys()
        {
            batch.remove(key?);
            n += 1;
        }
        self.inner.sums.apply_batch(batch)?;
        Ok(n)
    }

    fn decode_meta(&self, hash: &BlobHash, value: &[u8]) -> Result<BlobMeta, SdfsError> {
        BlobMeta::decode(value)
            .ok_or_else(|| SdfsError::Internal(format!("unreadable metadata for blob {hash}")))
    }

    fn lock_meta(&self) -> MutexGuard<'_, ()> {
        self.inner
            .meta_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// **For tests only:** [`BlobStore::forge_byte_for_tests`] on a closed store.
#[cfg(any(test, feature = "test-util"))]
pub fn forge_byte_for_tests(
    data_dir: impl AsRef<Path>,
    hash: &str,
    offset: u64,
) -> Result<(), SdfsError> {
    let hash = BlobHash::parse(hash)?;
    let store = BlobStore::open(data_dir)?;
    store.forge_byte_for_tests(&hash, offset)?;
    store.close()
}

/// **For tests only: simulated bit rot** on a closed store. Opens the store in `data_dir`,
/// flips every bit of the content byte at `offset` of blob `hash` without fixing the chunk's
/// checksum (see [`BlobStore::corrupt_byte_for_tests`]), and closes it again.
#[cfg(any(test, feature = "test-util"))]
pub fn corrupt_byte_for_tests(
    data_dir: impl AsRef<Path>,
    hash: &str,
    offset: u64,
) -> Result<(), SdfsError> {
    let hash = BlobHash::parse(hash)?;
    let store = BlobStore::open(data_dir)?;
    store.corrupt_byte_for_tests(&hash, offset)?;
    store.close()
}
