//! The Raft state machine on sled: applies committed [`Proposal`]s to the in-memory [`State`]
//! and writes the records they changed, `last_applied` and the membership in ONE atomic sled
//! batch, so a crash can never apply an entry twice. Builds, stores and installs snapshots.
//!
//! Readers (the API) share the state through [`SharedState`]; this file owns all writes.

use idunno_server::metrics::Histogram;
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    io_err, Entry, LogId, Outcome, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::state::{Change, Record, State};

/// Keys of the state tree that are not [`State`] records (state keys start with a letter).
const APPLIED: &[u8] = b"_applied";
const MEMBERSHIP: &[u8] = b"_membership";
/// Keys of the snapshot tree.
const SNAPSHOT_META: &[u8] = b"meta";
const SNAPSHOT_DATA: &[u8] = b"data";

/// The applied state with the log position it reflects.
#[derive(Debug, Default)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// The state as readers see it, plus a wake-up for those waiting for work to appear.
#[derive(Debug, Default)]
pub struct SharedState {
    applied: RwLock<Applied>,
    /// Notified when an applied command may have made work available.
    pub work: Notify,
}

impl SharedState {
    /// A read view of the applied state.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sled-backed state machine.
pub struct StateMachineStore {
    tree: sled::Tree,
    snapshots: sled::Tree,
    shared: Arc<SharedState>,
    /// Observes how long each apply call takes (`/metrics`).
    apply_time: Option<Histogram>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta,
}

impl StateMachineStore {
    /// Opens the state machine in `db`, loading the applied state (or the stored snapshot, if a
    /// crash interrupted its installation).
    pub fn open(db: &sled::Db) -> Result<StateMachineStore, StorageError> {
        let read = |e: sled::Error| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e);
        let sm = StateMachineStore {
            tree: db.open_tree("state").map_err(read)?,
            snapshots: db.open_tree("snapshot").map_err(read)?,
            shared: Arc::new(SharedState::default()),
            apply_time: None,
        };
        let applied = sm.load_tree()?;
        let snapshot = sm.stored_snapshot()?;
        let applied = match snapshot {
            Some((meta, data)) if meta.last_log_id > applied.last_applied => {
                sm.restore(&meta, &data)?
            }
            _ => applied,
        };
        *sm.shared.write() = applied;
        Ok(sm)
    }

    /// The same store, timing each apply into `histogram`.
    pub fn timed(self, histogram: Histogram) -> StateMachineStore {
        StateMachineStore {
            apply_time: Some(histogram),
            ..self
        }
    }

    /// The state readers share.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn load_tree(&self) -> Result<Applied, StorageError> {
        let err = |e: &dyn std::fmt::Display| {
            io_err(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                std::io::Error::other(e.to_string()),
            )
        };
        let mut records = Vec::new();
        let mut last_applied = None;
        let mut membership = StoredMembership::default();
        for item in self.tree.iter() {
            let (k, v) = item.map_err(|e| err(&e))?;
            match k.as_ref() {
                APPLIED => last_applied = serde_json::from_slice(&v).map_err(|e| err(&e))?,
                MEMBERSHIP => membership = serde_json::from_slice(&v).map_err(|e| err(&e))?,
                _ => records.push((k.to_vec(), v.to_vec())),
            }
        }
        let state = State::load(records).map_err(|e| err(&e))?;
        Ok(Applied {
            state,
            last_applied,
            membership,
        })
    }

    fn stored_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let err = |e: &dyn std::fmt::Display| {
            io_err(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Read,
                std::io::Error::other(e.to_string()),
            )
        };
        let meta = self.snapshots.get(SNAPSHOT_META).map_err(|e| err(&e))?;
        let data = self.snapshots.get(SNAPSHOT_DATA).map_err(|e| err(&e))?;
        match (meta, data) {
            (Some(meta), Some(data)) => {
                let meta: StoredSnapshotMeta =
                    serde_json::from_slice(&meta).map_err(|e| err(&e))?;
                Ok(Some((meta.meta, data.to_vec())))
            }
            _ => Ok(None),
        }
    }

    /// Replaces the state tree with a snapshot's records and returns the state they hold.
    fn restore(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<Applied, StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let records = decode_records(data)
            .map_err(|e| io_err(subject(), ErrorVerb::Read, std::io::Error::other(e)))?;
        let state =
            State::load(records.clone()).map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        let mut batch = sled::Batch::default();
        for item in self.tree.iter().keys() {
            batch.remove(item.map_err(|e| io_err(subject(), ErrorVerb::Write, e))?);
        }
        for (k, v) in records {
            batch.insert(k, v);
        }
        batch.insert(APPLIED, json(&meta.last_log_id));
        batch.insert(MEMBERSHIP, json(&meta.last_membership));
        self.tree
            .apply_batch(batch)
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        Ok(Applied {
            state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        })
    }

    /// Applies entries to the in-memory state; returns their outcomes and, if there were any,
    /// the last one's id with the sled batch that stores what they changed.
    #[allow(clippy::type_complexity)]
    fn apply_in_memory(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(Vec<Outcome>, Option<(LogId, sled::Batch, bool)>), StorageError> {
        let mut outcomes = Vec::new();
        let mut guard = self.shared.write();
        let applied = &mut *guard;
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => outcomes.push(Outcome::default()),
                EntryPayload::Normal(proposal) => outcomes.push(Outcome(
                    proposal
                        .0
                        .into_iter()
                        .map(|req| applied.state.apply(req))
                        .collect(),
                )),
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    outcomes.push(Outcome::default());
                }
            }
        }
        let Some(last) = last else {
            return Ok((outcomes, None));
        };
        let mut batch = sled::Batch::default();
        for change in applied.state.take_changes() {
            match change {
                Change::Put(k, v) => batch.insert(k, v),
                Change::Delete(k) => batch.remove(k),
                Change::DeletePrefix(prefix) => {
                    for key in self.tree.scan_prefix(&prefix).keys() {
                        let key =
                            key.map_err(|e| io_err(ErrorSubject::Apply(last), ErrorVerb::Read, e))?;
                        batch.remove(key);
                    }
                }
            }
        }
        batch.insert(APPLIED, json(&applied.last_applied));
        batch.insert(MEMBERSHIP, json(&applied.membership));
        let work = applied.state.take_work_changed();
        Ok((outcomes, Some((last, batch, work))))
    }

    fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let meta_bytes = serde_json::to_vec(&StoredSnapshotMeta { meta: meta.clone() })
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_META, meta_bytes);
        batch.insert(SNAPSHOT_DATA, data);
        self.snapshots
            .apply_batch(batch)
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        self.snapshots
            .flush()
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        Ok(())
    }
}

/// Encodes a meta value of the state tree (log ids and memberships always serialize).
fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Snapshot encoding: a sequence of (u32 LE key length, key, u32 LE value length, value).
fn encode_records(records: &[Record]) -> Vec<u8> {
    let size = records.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for (k, v) in records {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn decode_records(mut data: &[u8]) -> Result<Vec<Record>, String> {
    fn take<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let len_bytes: [u8; 4] = data
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or("truncated snapshot")?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let item = data.get(4..4 + len).ok_or("truncated snapshot")?;
        *data = &data[4 + len..];
        Ok(item)
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let k = take(&mut data)?.to_vec();
        let v = take(&mut data)?.to_vec();
        out.push((k, v));
    }
    Ok(out)
}

/// Builds snapshots from the shared state.
pub struct SnapshotBuilder {
    shared: Arc<SharedState>,
    snapshots: sled::Tree,
    tree: sled::Tree,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (records, last_log_id, last_membership) = {
            let applied = self.shared.read();
            (
                applied.state.dump(),
                applied.last_applied,
                applied.membership.clone(),
            )
        };
        let data = encode_records(&records);
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let store = StateMachineStore {
            tree: self.tree.clone(),
            snapshots: self.snapshots.clone(),
            shared: self.shared.clone(),
            apply_time: None,
        };
        store.save_snapshot(&meta, &data)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let (outcomes, written) = self.apply_in_memory(entries)?;
        let Some((last, batch, work)) = written else {
            if let Some(h) = &self.apply_time {
                h.observe(started.elapsed().as_secs_f64());
            }
            return Ok(outcomes);
        };
        // A big entry (a job listing 100 000 inputs) writes as many records: off the async
        // threads, so this node's Raft core and API keep running meanwhile.
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || tree.apply_batch(batch))
            .await
            .map_err(|e| io_err(ErrorSubject::Apply(last), ErrorVerb::Write, e))?
            .map_err(|e| io_err(ErrorSubject::Apply(last), ErrorVerb::Write, e))?;
        if let Some(h) = &self.apply_time {
            h.observe(started.elapsed().as_secs_f64());
        }
        if work {
            self.shared.work.notify_waiters();
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            snapshots: self.snapshots.clone(),
            tree: self.tree.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        // Stored first: if we crash while rewriting the state tree, `open` restores from it.
        self.save_snapshot(meta, &data)?;
        let applied = self.restore(meta, &data)?;
        *self.shared.write() = applied;
        self.shared.work.notify_waiters();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.stored_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_snapshot_encoding() {
        let records = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (Vec::new(), b"empty key".to_vec()),
            (b"c".to_vec(), Vec::new()),
        ];
        assert_eq!(decode_records(&encode_records(&records)).unwrap(), records);
        assert!(decode_records(&[1, 0, 0]).is_err());
        assert!(decode_records(&[9, 0, 0, 0, 1]).is_err());
    }
}
