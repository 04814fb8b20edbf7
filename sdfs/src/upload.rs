//! Writing a blob: an [`Upload`] appends the incoming bytes to its content file, checksums
//! every chunk as it completes (recorded in sled under the upload's id), and hashes the whole
//! content as it goes. Finishing checks the content hash, makes the file durable, records the
//! blob's metadata (or, for content the store already has, deletes the new copy), and makes
//! the checksums and the record durable with one flush before the blob is acknowledged.
//! Anything not finished is deleted — at once, or by recovery after a crash. Every call
//! blocks.

use std::fs::File;
use std::io::{IoSlice, Write};

use bytes::Bytes;
use idunno_api::file::StoredBlob;

use crate::blob_store::{BlobStore, Committed};
use crate::chunk::chunk_key;
use crate::error::SdfsError;
use crate::hash::BlobHash;
use crate::meta::{now_ms, BlobMeta};

/// A blob being written. Dropping it unfinished deletes what it stored (that does disk I/O:
/// async code should drop it, or call [`Upload::abort`], on a blocking thread).
pub struct Upload {
    store: BlobStore,
    /// Names this upload's file and checksums (`db.generate_id()`): known before the
    /// content hash is.
    id: u64,
    file: File,
    chunk_size: u64,
    /// BLAKE3 of the chunk being filled, and how much of it is filled.
    chunk: blake3::Hasher,
    chunk_filled: u64,
    /// Chunks completed (and checksummed) so far.
    chunks: u64,
    /// Content bytes received so far.
    size: u64,
    /// BLAKE3 of the whole content.
    whole: blake3::Hasher,
    /// Sealed or aborted: nothing left to clean up on drop.
    settled: bool,
}

impl Upload {
    pub(crate) fn begin(store: BlobStore) -> Result<Upload, SdfsError> {
        let id = store.inner.db.generate_id()?;
        // Marked pending before the file exists: after a crash, recovery deletes the file and
        // checksums of any pending upload (and any file nobody owns).
        store.inner.pending.insert(id.to_be_bytes(), &[][..])?;
        let file = match store.inner.content.create(id) {
            Ok(f) => f,
            Err(e) => {
                let _ = store.inner.pending.remove(id.to_be_bytes());
                return Err(e.into());
            }
        };
        let chunk_size = store.inner.chunk_size as u64;
        Ok(Upload {
            store,
            id,
            file,
            chunk_size,
            chunk: blake3::Hasher::new(),
            chunk_filled: 0,
            chunks: 0,
            size: 0,
            whole: blake3::Hasher::new(),
            settled: false,
        })
    }

    /// The upload's id (names its content file and checksums).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Content bytes written so far.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Appends content.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SdfsError> {
        self.hash(data)?;
        self.file.write_all(data)?;
        Ok(())
    }

    /// Appends several pieces with as few system calls as possible (vectored writes).
    pub fn write_pieces(&mut self, pieces: &[Bytes]) -> Result<(), SdfsError> {
        for piece in pieces {
            self.hash(piece)?;
        }
        let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match self.file.write_vectored(slices) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Stores the last chunk's checksum, checks the content hash against `expected` (a
    /// mismatch deletes everything and fails with [`SdfsError::HashMismatch`]) and finishes
    /// the blob: durable and listed when this returns. Storing content the store already has
    /// keeps one copy.
    ///
    /// One store flush, after the record, makes the checksums and the record durable
    /// together: the blob is acknowledged only after it. A crash before it may leave any part
    /// of them, and nothing a reader would trust: a record whose checksums did not survive
    /// fails verification at its first read (the blob is reported lost), and the blob was
    /// never acknowledged, so no namespace entry names it and reconciliation deletes it.
    pub fn finish(self, expected: Option<&BlobHash>) -> Result<StoredBlob, SdfsError> {
        let sealed = self.seal(expected)?;
        let store = sealed.store.clone();
        let stored = sealed.commit()?;
        store.flush()?;
        Ok(stored)
    }

    /// The first half of [`Upload::finish`]: checks the hash and fsyncs the content file.
    /// The checksums still need a store flush (after the commit); the blob is not listed yet.
    pub fn seal(mut self, expected: Option<&BlobHash>) -> Result<SealedUpload, SdfsError> {
        if self.chunk_filled > 0 {
            self.store_chunk_sum()?;
        }
        let hash = BlobHash::from(self.whole.finalize());
        if let Some(expected) = expected {
            if *expected != hash {
                self.settled = true;
                self.store.discard_upload(self.id, self.chunks)?;
                return Err(SdfsError::HashMismatch {
                    expected: expected.to_hex(),
                    actual: hash.to_hex(),
                });
            }
        }
        self.file.sync_data()?;
        self.store.inner.content.sync()?;
        self.settled = true;
        Ok(SealedUpload {
            store: self.store.clone(),
            hash,
            meta: BlobMeta {
                size: self.size,
                upload: self.id,
                chunk_size: self.chunk_size as u32,
                created_ms: now_ms(),
                // Upload ids are unique, so they serve as stamps.
                stamp: self.id,
            },
            committed: false,
        })
    }

    /// Deletes everything this upload stored.
    pub fn abort(mut self) -> Result<(), SdfsError> {
        self.settled = true;
        self.store.discard_upload(self.id, self.chunks_started())
    }

    /// Feeds the hashes, storing each chunk's checksum as the chunk completes.
    fn hash(&mut self, mut data: &[u8]) -> Result<(), SdfsError> {
        self.whole.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let n = (self.chunk_size - self.chunk_filled).min(data.len() as u64) as usize;
            self.chunk.update(&data[..n]);
            self.chunk_filled += n as u64;
            data = &data[n..];
            if self.chunk_filled == self.chunk_size {
                self.store_chunk_sum()?;
            }
        }
        Ok(())
    }

    fn store_chunk_sum(&mut self) -> Result<(), SdfsError> {
        let index = u32::try_from(self.chunks)
            .map_err(|_| SdfsError::BadRequest("the blob is too large".into()))?;
        let sum = self.chunk.finalize();
        self.store
            .inner
            .sums
            .insert(chunk_key(self.id, index), sum.as_bytes())?;
        self.chunk.reset();
        self.chunk_filled = 0;
        self.chunks += 1;
        Ok(())
    }

    /// Chunks with a stored checksum, plus the one being filled.
    fn chunks_started(&self) -> u64 {
        self.chunks + u64::from(self.chunk_filled > 0)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.settled {
            if let Err(e) = self.store.discard_upload(self.id, self.chunks_started()) {
                tracing::warn!(upload = self.id, error = %e, "could not delete an abandoned upload; it goes at the next start");
            }
        }
    }
}

/// An upload whose content is complete, hash-checked and fsynced but not yet recorded. Flush
/// the store, then [`SealedUpload::commit`]. Dropping it uncommitted deletes it.
pub struct SealedUpload {
    store: BlobStore,
    hash: BlobHash,
    meta: BlobMeta,
    committed: bool,
}

impl SealedUpload {
    /// The content hash.
    pub fn hash(&self) -> &BlobHash {
        &self.hash
    }

    /// Content bytes.
    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// Records the blob (its checksums must be flushed already); if the store already holds
    /// this content, deletes the new copy instead. The record itself still needs a flush.
    pub fn commit(mut self) -> Result<StoredBlob, SdfsError> {
        let outcome = self.store.commit(&self.hash, &self.meta)?;
        self.committed = true;
        if let Committed::Duplicate = outcome {
            tracing::debug!(hash = %self.hash, "already stored; kept one copy");
        }
        Ok(StoredBlob {
            hash: self.hash.to_hex(),
            size: self.meta.size,
        })
    }
}

impl Drop for SealedUpload {
    fn drop(&mut self) {
        if !self.committed {
            let (upload, chunks) = (self.meta.upload, self.meta.chunk_count());
            if let Err(e) = self.store.discard_upload(upload, chunks) {
                tracing::warn!(upload, error = %e, "could not delete an abandoned upload; it goes at the next start");
            }
        }
    }
}
