//! Reading a stored blob: a cursor that reads its content file ~1 MiB at a time, verifies
//! each chunk against its checksum before handing out any of its bytes, and slices the first
//! and last chunk to the requested range. It blocks (file and sled reads); `transfer.rs`
//! turns it into an async stream.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::blob_store::BlobStore;
use crate::chunk::{self, ChunkFault};
use crate::error::SdfsError;
use crate::hash::BlobHash;
use crate::meta::BlobMeta;
use idunno_api::range::ByteRange;

/// Bytes read from the content file per system call (whole chunks, at least one).
const READ_AHEAD: u64 = 1 << 20;

/// A verified read of (a range of) one blob. Yields the content as pieces of at most one
/// chunk each. After an error it yields nothing more.
pub struct BlobRead {
    store: BlobStore,
    hash: BlobHash,
    meta: BlobMeta,
    range: ByteRange,
    /// Offset of the next byte to hand out.
    next: u64,
    /// The content file, opened at the first read.
    file: Option<File>,
    /// Unverified bytes read ahead, starting at offset `window_start` (a chunk boundary).
    window: Bytes,
    window_start: u64,
}

impl BlobRead {
    pub(crate) fn new(
        store: BlobStore,
        hash: BlobHash,
        meta: BlobMeta,
        range: ByteRange,
    ) -> BlobRead {
        BlobRead {
            store,
            hash,
            meta,
            range,
            next: range.start,
            file: None,
            window: Bytes::new(),
            window_start: 0,
        }
    }

    pub fn hash(&self) -> &BlobHash {
        &self.hash
    }

    pub fn meta(&self) -> &BlobMeta {
        &self.meta
    }

    /// The bytes this read covers.
    pub fn range(&self) -> ByteRange {
        self.range
    }

    /// Bytes not handed out yet.
    pub fn remaining(&self) -> u64 {
        self.range.end - self.next
    }

    /// Reads everything left into one buffer (for small blobs and tests).
    pub fn read_to_vec(self) -> Result<Vec<u8>, SdfsError> {
        let mut out = Vec::with_capacity(usize::try_from(self.remaining()).unwrap_or(0));
        for piece in self {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    fn next_piece(&mut self) -> Result<Bytes, SdfsError> {
        let cs = u64::from(self.meta.chunk_size);
        let index = self.next / cs;
        let chunk_start = index * cs;
        let chunk = match self.verified_chunk(index) {
            Ok(chunk) => chunk,
            Err(Fault::Chunk(fault)) => {
                return Err(self.store.chunk_fault(&self.hash, &self.meta, index, fault))
            }
            Err(Fault::Other(e)) => return Err(e),
        };
        let from = (self.next - chunk_start) as usize;
        let to = (self.range.end - chunk_start).min(chunk.len() as u64) as usize;
        let piece = chunk.slice(from..to);
        self.next = chunk_start + to as u64;
        self.store
            .inner
            .bytes_read
            .fetch_add(piece.len() as u64, Ordering::Relaxed);
        Ok(piece)
    }

    /// Chunk `index`, checked against its checksum.
    fn verified_chunk(&mut self, index: u64) -> Result<Bytes, Fault> {
        let cs = u64::from(self.meta.chunk_size);
        let (start, len) = (index * cs, self.meta.chunk_len(index) as u64);
        let in_window = start >= self.window_start
            && start + len <= self.window_start + self.window.len() as u64;
        if !in_window {
            self.read_window(index)?;
        }
        let offset = (start - self.window_start) as usize;
        let chunk = self.window.slice(offset..offset + len as usize);
        let key = chunk::chunk_key(self.meta.upload, index as u32);
        let sum = self
            .store
            .inner
            .sums
            .get(key)
            .map_err(|e| Fault::Other(e.into()))?
            .ok_or(Fault::Chunk(ChunkFault::Missing))?;
        chunk::verify(&chunk, &sum).map_err(Fault::Chunk)?;
        Ok(chunk)
    }

    /// Reads whole chunks from chunk `index` on, up to [`READ_AHEAD`] bytes and no further
    /// than the range needs.
    fn read_window(&mut self, index: u64) -> Result<(), Fault> {
        let cs = u64::from(self.meta.chunk_size);
        let start = index * cs;
        let last_needed = (self.range.end - 1) / cs;
        let end = (start + READ_AHEAD.max(cs) / cs * cs)
            .min((last_needed + 1) * cs)
            .min(self.meta.size);
        if self.file.is_none() {
            let file = self
                .store
                .inner
                .content
                .open_file(self.meta.upload)
                .map_err(io_fault)?;
            self.file = Some(file);
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| Fault::Other(SdfsError::Internal("no content file".into())))?;
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start).map_err(io_fault)?;
        self.window = Bytes::from(buf);
        self.window_start = start;
        Ok(())
    }
}

/// Why a chunk could not be read: its own fault (rot, missing bytes) or anything else.
enum Fault {
    Chunk(ChunkFault),
    Other(SdfsError),
}

/// A missing or short content file is a missing chunk; other I/O errors are just errors.
fn io_fault(e: std::io::Error) -> Fault {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::UnexpectedEof => Fault::Chunk(ChunkFault::Missing),
        _ => Fault::Other(e.into()),
    }
}

impl Iterator for BlobRead {
    type Item = Result<Bytes, SdfsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.range.end {
            return None;
        }
        let piece = self.next_piece();
        if piece.is_err() {
            self.next = self.range.end; // nothing more after an error
        }
        Some(piece)
    }
}
