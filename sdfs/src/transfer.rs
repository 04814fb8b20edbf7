//! Streaming between the network and the blob store without blocking the async threads.
//! Writes: incoming pieces are gathered into ~1 MiB batches, and each batch is stored on a
//! blocking thread while the next one arrives. Reads: chunks are read and verified ~1 MiB at
//! a time on a blocking thread, one batch ahead of what the network is sending. Memory stays
//! bounded by a few batches whatever the blob's size. No HTTP here.

use std::collections::VecDeque;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use idunno_api::file::StoredBlob;
use tokio::sync::watch;
use tokio::task::{spawn_blocking, JoinHandle};

use crate::blob_read::BlobRead;
use crate::blob_store::BlobStore;
use crate::error::SdfsError;
use crate::hash::BlobHash;
use crate::upload::Upload;

/// Content handed to one blocking call, in either direction.
const BATCH_BYTES: usize = 1 << 20;

/// Stores a stream of content as one blob; with `expected`, the content must have that hash.
/// Returns once the blob is durable. If the stream fails, the hash does not match or
/// `shutdown` turns true, nothing is kept.
pub async fn store_stream<S>(
    store: &BlobStore,
    mut content: S,
    expected: Option<BlobHash>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<StoredBlob, SdfsError>
where
    S: Stream<Item = Result<Bytes, SdfsError>> + Unpin,
{
    let mut writer = BlobWriter::begin(store).await?;
    loop {
        let piece = tokio::select! {
            piece = content.next() => piece,
            _ = shutdown.wait_for(|stop| *stop) => return Err(SdfsError::ShuttingDown),
        };
        match piece {
            Some(Ok(bytes)) => writer.write(bytes).await?,
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    writer.finish(expected).await
}

/// An [`Upload`] driven from async code, one batch in flight. Dropping it unfinished deletes
/// what it stored, on a blocking thread.
pub struct BlobWriter {
    store: BlobStore,
    /// The upload while no blocking task holds it.
    upload: Option<Upload>,
    /// The blocking task storing the previous batch; it hands the upload back.
    in_flight: Option<JoinHandle<(Upload, Result<(), SdfsError>)>>,
    /// Pieces gathered for the next batch.
    batch: Vec<Bytes>,
    batch_len: usize,
}

impl BlobWriter {
    /// Starts an upload.
    pub async fn begin(store: &BlobStore) -> Result<BlobWriter, SdfsError> {
        let s = store.clone();
        let upload = spawn_blocking(move || s.upload()).await??;
        Ok(BlobWriter {
            store: store.clone(),
            upload: Some(upload),
            in_flight: None,
            batch: Vec::new(),
            batch_len: 0,
        })
    }

    /// Appends content (kept by reference until its batch is stored).
    pub async fn write(&mut self, piece: Bytes) -> Result<(), SdfsError> {
        if piece.is_empty() {
            return Ok(());
        }
        self.batch_len += piece.len();
        self.batch.push(piece);
        if self.batch_len >= BATCH_BYTES {
            let mut upload = self.take_upload().await?;
            let batch = self.take_batch();
            self.in_flight = Some(spawn_blocking(move || {
                let result = upload.write_pieces(&batch);
                (upload, result)
            }));
        }
        Ok(())
    }

    /// Stores the rest, checks the hash, makes the blob durable and records it.
    pub async fn finish(mut self, expected: Option<BlobHash>) -> Result<StoredBlob, SdfsError> {
        let mut upload = self.take_upload().await?;
        let batch = self.take_batch();
        let sealed = spawn_blocking(move || {
            upload.write_pieces(&batch)?;
            upload.seal(expected.as_ref())
        })
        .await??;
        // Until committed, dropping `sealed` must delete its chunks off the async threads.
        let sealed = OffThread(Some(sealed));
        let stored = sealed.run(|s| s.commit()).await?;
        // One flush makes the checksums and the record durable together ([`Upload::finish`]
        // says why one is enough).
        self.store.flush_async().await?;
        Ok(stored)
    }

    /// The upload, once the batch in flight (if any) is stored.
    async fn take_upload(&mut self) -> Result<Upload, SdfsError> {
        if let Some(task) = self.in_flight.take() {
            let (upload, result) = task.await?;
            self.upload = Some(upload);
            result?;
        }
        self.upload
            .take()
            .ok_or_else(|| SdfsError::Internal("the upload is already settled".into()))
    }

    fn take_batch(&mut self) -> Vec<Bytes> {
        self.batch_len = 0;
        std::mem::take(&mut self.batch)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let upload = self.upload.take();
        let in_flight = self.in_flight.take();
        if upload.is_none() && in_flight.is_none() {
            return;
        }
        // Deleting an abandoned upload does disk I/O: keep it off this (async) thread.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let from_task = match in_flight {
                        Some(task) => task.await.ok().map(|(upload, _)| upload),
                        None => None,
                    };
                    let _ = spawn_blocking(move || drop((upload, from_task))).await;
                });
            }
            Err(_) => drop(upload),
        }
    }
}

/// A value whose drop does blocking I/O, kept so that it is dropped on a blocking thread.
struct OffThread<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> OffThread<T> {
    /// Consumes the value on a blocking thread.
    async fn run<R: Send + 'static>(
        mut self,
        f: impl FnOnce(T) -> Result<R, SdfsError> + Send + 'static,
    ) -> Result<R, SdfsError> {
        let value = self
            .0
            .take()
            .ok_or_else(|| SdfsError::Internal("value already taken".into()))?;
        spawn_blocking(move || f(value)).await?
    }
}

impl<T: Send + 'static> Drop for OffThread<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(value))),
                Err(_) => drop(value),
            }
        }
    }
}

/// A blob read as an async stream of verified pieces, reading one batch ahead. A chunk that
/// fails verification ends the stream with an error (after the verified bytes before it).
pub struct BlobStream {
    ready: VecDeque<Bytes>,
    error: Option<SdfsError>,
    next: Option<JoinHandle<Batch>>,
    shutdown: watch::Receiver<bool>,
}

/// What one blocking read returns: the reader back, verified pieces, and the error that
/// stopped it early, if any.
type Batch = (BlobRead, Vec<Bytes>, Option<SdfsError>);

impl BlobStream {
    /// Starts reading and waits for the first batch, so that a blob whose first chunk is
    /// corrupt fails here, before any response is sent.
    pub async fn start(
        read: BlobRead,
        shutdown: watch::Receiver<bool>,
    ) -> Result<BlobStream, SdfsError> {
        let mut stream = BlobStream {
            ready: VecDeque::new(),
            error: None,
            next: Some(read_batch(read)),
            shutdown,
        };
        stream.receive().await;
        if stream.ready.is_empty() {
            if let Some(e) = stream.error.take() {
                return Err(e);
            }
        }
        Ok(stream)
    }

    /// Turns it into a `Stream` (for a response body).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, SdfsError>> + Send + 'static {
        futures::stream::unfold(self, |mut s| async move {
            let item = s.next_piece().await?;
            Some((item, s))
        })
    }

    /// The next piece, `None` at the end.
    pub async fn next_piece(&mut self) -> Option<Result<Bytes, SdfsError>> {
        loop {
            if *self.shutdown.borrow() {
                self.ready.clear();
                self.next = None;
                return self.error.take().or(Some(SdfsError::ShuttingDown)).map(Err);
            }
            if let Some(piece) = self.ready.pop_front() {
                return Some(Ok(piece));
            }
            if let Some(e) = self.error.take() {
                self.next = None;
                return Some(Err(e));
            }
            self.next.as_ref()?;
            self.receive().await;
        }
    }

    /// Waits for the batch in flight and starts reading the one after it.
    async fn receive(&mut self) {
        let Some(task) = self.next.take() else {
            return;
        };
        match task.await {
            Ok((read, pieces, error)) => {
                self.ready.extend(pieces);
                if error.is_none() && read.remaining() > 0 {
                    self.next = Some(read_batch(read));
                }
                self.error = error;
            }
            Err(e) => self.error = Some(e.into()),
        }
    }
}

/// Reads up to [`BATCH_BYTES`] on a blocking thread.
fn read_batch(mut read: BlobRead) -> JoinHandle<Batch> {
    spawn_blocking(move || {
        let mut pieces = Vec::new();
        let mut len = 0;
        while len < BATCH_BYTES {
            match read.next() {
                Some(Ok(piece)) => {
                    len += piece.len();
                    pieces.push(piece);
                }
                Some(Err(e)) => return (read, pieces, Some(e)),
                None => break,
            }
        }
        (read, pieces, None)
    })
}

/// Runs blocking store work on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SdfsError> + Send + 'static,
) -> Result<T, SdfsError> {
    spawn_blocking(f).await?
}
