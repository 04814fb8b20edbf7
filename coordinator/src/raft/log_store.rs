//! The Raft log on sled: entries keyed by big-endian index in the `raft_log` tree; the vote,
//! the committed log id and the last purged log id in `raft_meta`.
//!
//! An append is reported done only after sled has flushed it to disk; the vote is flushed
//! before it is acknowledged. This file knows nothing of what the entries mean.

use idunno_server::metrics::Histogram;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{io_err, Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// The sled-backed Raft log. Clones share the same trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// Last committed index as last saved (`u64::MAX` = none), for status pages.
    committed: Arc<AtomicU64>,
    /// Observes how long each append takes, written and flushed (`/metrics`).
    append_time: Option<Histogram>,
}

impl LogStore {
    /// Opens (or creates) the log in `db`.
    pub fn open(db: &sled::Db) -> Result<LogStore, sled::Error> {
        let store = LogStore {
            db: db.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            committed: Arc::new(AtomicU64::new(u64::MAX)),
            append_time: None,
        };
        if let Ok(Some(c)) = store.get_meta::<LogId>(COMMITTED) {
            store.committed.store(c.index, Ordering::Relaxed);
        }
        Ok(store)
    }

    /// The same store, timing each append into `histogram`.
    pub fn timed(self, histogram: Histogram) -> LogStore {
        LogStore {
            append_time: Some(histogram),
            ..self
        }
    }

    /// The committed index as last reported by Raft.
    pub fn committed_index(&self) -> Option<u64> {
        match self.committed.load(Ordering::Relaxed) {
            u64::MAX => None,
            i => Some(i),
        }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let read = |e: &dyn std::fmt::Display| {
            io_err(
                ErrorSubject::Store,
                ErrorVerb::Read,
                std::io::Error::other(e.to_string()),
            )
        };
        match self.meta.get(key).map_err(|e| read(&e))? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| read(&e)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(
        &self,
        subject: ErrorSubject<NodeId>,
        key: &[u8],
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.flush_db()
            .await
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))
    }

    /// Makes every write so far durable. Not with sled's `flush_async`: that runs the flush
    /// on sled's own small thread pool, where it waits for the log writes queued behind it
    /// on the same pool — with a few flushes at once (several appends, or several databases
    /// in one process) the pool starves and every flush waits forever (sled 0.34, issue
    /// #1308; seen here as a hung test process). On tokio's blocking pool the flush leaves
    /// sled's threads free for the writes it waits on.
    async fn flush_db(&self) -> std::io::Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(std::io::Error::other)?
            .map(|_| ())
            .map_err(std::io::Error::other)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        match self
            .log
            .last()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
        {
            Some((_, bytes)) => Ok(Some(decode_entry(&bytes)?.log_id)),
            None => Ok(None),
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log
            .range::<[u8; 8], _>((start, end))
            .map(|item| {
                let (_, bytes) =
                    item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                decode_entry(&bytes)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(ErrorSubject::Vote, VOTE, vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(ErrorSubject::Store, COMMITTED, &committed)?;
        self.committed
            .store(committed.map_or(u64::MAX, |c| c.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Encoding and writing a large entry takes a while: off the async threads, so that
        // heartbeats and votes are still answered meanwhile.
        let started = std::time::Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = sled::Batch::default();
            for entry in entries {
                let bytes = serde_json::to_vec(&entry)
                    .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
                batch.insert(&index_key(entry.log_id.index), bytes);
            }
            log.apply_batch(batch)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
        })
        .await
        .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))??;
        let flushed = self.flush_db().await;
        if let Some(h) = &self.append_time {
            h.observe(started.elapsed().as_secs_f64());
        }
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge marker goes first, so a crash mid-purge never leaves a gap unaccounted for.
        // The flush also makes every state-machine write before it durable (one sled log), so
        // the state machine is never behind the purged prefix after a crash.
        self.put_meta(ErrorSubject::Logs, PURGED, &log_id)?;
        self.flush(ErrorSubject::Logs).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }
}
