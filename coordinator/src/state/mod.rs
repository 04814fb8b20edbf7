//! The replicated state: everything that must survive a coordinator's death, and nothing else.
//!
//! [`State`] is plain data plus a deterministic [`State::apply`]. It tracks which records a
//! command changed ([`Key`]) so the Raft state machine can write exactly those, together with
//! `last_applied`, in one atomic sled batch. It knows nothing of Raft, sled or HTTP.

pub mod command;
pub mod files;
pub mod jobs;
pub mod models;
pub mod stats;
pub mod workers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use idunno_api::Millis;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use command::{Command, CommandError, Request, Response};
use files::{BlobRecord, FileRecord, NodeRecord};
use jobs::{BatchId, BatchRecord, BatchState, JobRecord};
use models::ModelRecord;
use stats::{CostWindow, JobStatsIndex};
use workers::WorkerRecord;

/// Most bytes of input names in one stored record of a job's input list (a record holds at
/// least one name). Small enough that a sled leaf of such records (16 at most) stays below
/// sled's 128 KiB blob threshold, so a change to a neighbouring key never rewrites a blob.
pub const INPUT_CHUNK_BYTES: usize = 4096;

/// Key tag of the input lists of an earlier version, one name per key; still read, and
/// deleted with their job.
const LEGACY_INPUT_TAG: u8 = b'i';

/// How long a client request id is remembered: a retry after this is a new request.
pub const REQUEST_TTL_MS: u64 = 10 * 60 * 1000;

/// Monotonic counters and the replicated clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub next_job_id: u64,
    pub next_lease_id: u64,
    /// The largest time stamped into an applied command: the state's notion of "now".
    pub now_ms: Millis,
}

/// A remembered answer to a client request, for retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    pub time_ms: Millis,
    pub response: Response,
    /// What the request asked for ([`fingerprint`]): a request id reused for anything else is
    /// refused rather than answered with this response. Empty in records of earlier versions,
    /// which match anything.
    #[serde(default)]
    pub fingerprint: String,
}

/// What a client request asked for, so that a retry can be told from a different request
/// under the same id: the command's kind and a hash of what the client chose. An upload's
/// replicas are picked anew by each attempt, so a file version is known by its name and
/// content alone.
pub fn fingerprint(cmd: &Command) -> String {
    let mut hasher = blake3::Hasher::new();
    let encoded = match cmd {
        Command::PutVersion {
            path, hash, size, ..
        } => serde_json::to_writer(&mut hasher, &(path, hash, size)),
        cmd => serde_json::to_writer(&mut hasher, cmd),
    };
    // Encoding plain data into a hasher cannot fail; if it did, the kind alone still tells.
    let hash = match encoded {
        Ok(()) => hasher.finalize().to_hex()[..16].to_string(),
        Err(_) => String::new(),
    };
    format!("{}:{hash}", kind(cmd))
}

/// The command's name, as its `op` tag spells it.
fn kind(cmd: &Command) -> &'static str {
    match cmd {
        Command::PutModel { .. } => "put_model",
        Command::DeleteModel { .. } => "delete_model",
        Command::LoadModel { .. } => "load_model",
        Command::CreateJob { .. } => "create_job",
        Command::UpdateJob { .. } => "update_job",
        Command::StartJob { .. } => "start_job",
        Command::StopJob { .. } => "stop_job",
        Command::DeleteJob { .. } => "delete_job",
        Command::Lease { .. } => "lease",
        Command::Complete { .. } => "complete",
        Command::Release { .. } => "release",
        Command::Expire { .. } => "expire",
        Command::RegisterNode { .. } => "register_node",
        Command::SetNodeAlive { .. } => "set_node_alive",
        Command::PutVersion { .. } => "put_version",
        Command::DeleteFile { .. } => "delete_file",
        Command::AddReplicas { .. } => "add_replicas",
        Command::DropReplicas { .. } => "drop_replicas",
        Command::RegisterWorker { .. } => "register_worker",
        Command::DeregisterWorker { .. } => "deregister_worker",
    }
}

/// One stored record: what [`State`] persists, one sled key each. A job's input list is
/// stored in chunks of about [`INPUT_CHUNK_BYTES`] under the [`Key::Inputs`] prefix: a big
/// list must not sit in one value, which sled would rewrite whole whenever a neighbouring
/// record changes, nor in one key per name, which makes a job of 100 000 inputs a write of
/// 100 000 keys that holds up everything else on the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Counters,
    Model(String),
    Job(u64),
    /// The prefix of a job's input list (`Inputs(job)` + u32 chunk number → JSON list of
    /// names).
    Inputs(u64),
    Batch(BatchId),
    Request(String),
    File(String),
    Blob(String),
    Node(String),
    Worker(String),
}

impl Key {
    /// The sled key: a one-letter prefix, then the id (big-endian numbers sort numerically).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        match self {
            Key::Counters => out.push(b'c'),
            Key::Model(name) => {
                out.push(b'm');
                out.extend_from_slice(name.as_bytes());
            }
            Key::Job(id) => {
                out.push(b'j');
                out.extend_from_slice(&id.to_be_bytes());
            }
            Key::Inputs(id) => {
                out.push(b'l');
                out.extend_from_slice(&id.to_be_bytes());
            }
            Key::Batch(id) => {
                out.push(b'b');
                out.extend_from_slice(&id.job.to_be_bytes());
                out.extend_from_slice(&id.seq.to_be_bytes());
            }
            Key::Request(id) => {
                out.push(b'r');
                out.extend_from_slice(id.as_bytes());
            }
            Key::File(path) => {
                out.push(b'f');
                out.extend_from_slice(path.as_bytes());
            }
            Key::Blob(hash) => {
                out.push(b'h');
                out.extend_from_slice(hash.as_bytes());
            }
            Key::Node(id) => {
                out.push(b'n');
                out.extend_from_slice(id.as_bytes());
            }
            Key::Worker(id) => {
                out.push(b'w');
                out.extend_from_slice(id.as_bytes());
            }
        }
        out
    }
}

/// One stored record: (key, value), as in the state tree and in snapshots.
pub type Record = (Vec<u8>, Vec<u8>);

/// A write to the stored form of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Delete every key that starts with this prefix.
    DeletePrefix(Vec<u8>),
}

/// A stored record that could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("corrupt state record {key:?}: {reason}")]
pub struct DecodeError {
    pub key: String,
    pub reason: String,
}

/// The replicated state machine's data.
#[derive(Debug, Default)]
pub struct State {
    pub(crate) counters: Counters,
    pub(crate) models: BTreeMap<String, ModelRecord>,
    pub(crate) jobs: BTreeMap<u64, JobRecord>,
    pub(crate) inputs: BTreeMap<u64, Arc<Vec<String>>>,
    pub(crate) batches: BTreeMap<BatchId, BatchRecord>,
    pub(crate) requests: BTreeMap<String, Remembered>,
    pub(crate) files: BTreeMap<String, FileRecord>,
    pub(crate) blobs: BTreeMap<String, BlobRecord>,
    pub(crate) nodes: BTreeMap<String, NodeRecord>,
    pub(crate) workers: BTreeMap<String, WorkerRecord>,

    // Indexes derived from the records above, rebuilt on load, never stored.
    /// Batches in the leased state, for the leader's expiry scan.
    leased: BTreeSet<BatchId>,
    /// Worker request id → the batch its lease call got, while the lease lasts.
    lease_requests: HashMap<String, BatchId>,
    /// Remembered requests by age, for pruning.
    request_ages: BTreeSet<(Millis, String)>,
    /// Per job: latency and compute distributions, workers, recent completions.
    job_stats: BTreeMap<u64, JobStatsIndex>,
    /// Per model: the cost of its last completed batches.
    costs: BTreeMap<String, CostWindow>,
    /// Per storage node: bytes of the blobs whose replica sets name it (placement fills the
    /// emptiest node first; summing the blobs on every upload cost O(namespace)).
    node_bytes: HashMap<String, u64>,

    /// Records changed since the last [`State::take_changes`].
    dirty: BTreeSet<Key>,
    /// Set when a command may have made work available (a job started, a batch came back).
    pub(crate) work_changed: bool,
}

impl State {
    /// Applies one log entry's command. Deterministic: the same state and request give the same
    /// state and response on every replica.
    pub fn apply(&mut self, req: Request) -> Response {
        let now = req.time_ms.max(self.counters.now_ms);
        if now != self.counters.now_ms {
            self.counters.now_ms = now;
            self.touch(Key::Counters);
        }
        self.prune_requests(now);
        let remember = !req.id.is_empty() && !matches!(req.cmd, Command::Lease { .. });
        let fingerprint = if remember {
            fingerprint(&req.cmd)
        } else {
            String::new()
        };
        if remember {
            if let Some(seen) = self.requests.get(&req.id) {
                if seen.fingerprint.is_empty() || seen.fingerprint == fingerprint {
                    return seen.response.clone();
                }
                return Response::Failed(CommandError::Conflict(format!(
                    "request id {:?} was already used for a different request ({}); use a new \
                     Idempotency-Key for a new request",
                    req.id,
                    seen.fingerprint.split(':').next().unwrap_or_default()
                )));
            }
        }
        let response = self.execute(req.cmd, &req.id, now);
        if remember {
            self.requests.insert(
                req.id.clone(),
                Remembered {
                    time_ms: now,
                    response: response.clone(),
                    fingerprint,
                },
            );
            self.request_ages.insert((now, req.id.clone()));
            self.touch(Key::Request(req.id));
        }
        response
    }

    fn execute(&mut self, cmd: Command, request: &str, now: Millis) -> Response {
        fn job(r: Result<u64, CommandError>) -> Response {
            r.map_or_else(Response::Failed, |id| Response::Job { id })
        }
        fn done(r: Result<(), CommandError>) -> Response {
            r.map_or_else(Response::Failed, |()| Response::Done)
        }
        match cmd {
            Command::PutModel {
                name,
                arch,
                weights,
                input_size,
                cost_ms,
                online,
            } => self
                .put_model(name, arch, weights, input_size, (cost_ms, online), now)
                .map_or_else(Response::Failed, Response::Model),
            Command::DeleteModel { name } => done(self.delete_model(&name)),
            Command::LoadModel { name } => self
                .preload_model(&name)
                .map_or_else(Response::Failed, Response::Model),
            Command::CreateJob {
                name,
                model,
                inputs,
                batch_size,
                weight,
                start,
            } => job(self.create_job(name, model, inputs, batch_size, weight, start, now)),
            Command::UpdateJob {
                job: id,
                batch_size,
                weight,
            } => job(self.update_job(id, batch_size, weight)),
            Command::StartJob { job: id } => job(self.start_job(id, now)),
            Command::StopJob { job: id } => job(self.stop_job(id)),
            Command::DeleteJob { job: id } => match self.delete_job(id) {
                Ok(()) => Response::Freed {
                    freed: self.delete_files_under(&idunno_api::result::job_results_prefix(id)),
                },
                Err(e) => Response::Failed(e),
            },
            Command::Lease {
                worker,
                job,
                lease_timeout_ms,
                passes,
            } => self.lease(
                worker,
                job,
                passes,
                request.to_string(),
                lease_timeout_ms,
                now,
            ),
            Command::Complete {
                batch,
                lease_id,
                result,
                failed,
                compute_ms,
                results,
            } => self.complete_with_results(
                (batch, lease_id),
                result,
                results,
                failed,
                compute_ms,
                now,
            ),
            Command::Release { batch, lease_id } => self
                .release(batch, lease_id)
                .map_or_else(Response::Failed, |released| Response::Released { released }),
            Command::Expire { leases } => Response::Expired {
                count: self.expire(&leases),
            },
            Command::RegisterNode { id, addr } => done(self.register_node(id, addr, now)),
            Command::SetNodeAlive { id, alive } => done(self.set_node_alive(&id, alive, now)),
            Command::PutVersion {
                path,
                hash,
                size,
                replicas,
                target,
                keep,
            } => match self.put_version(path, hash, size, replicas, target, keep, now) {
                Ok((version, freed)) => Response::Version { version, freed },
                Err(e) => Response::Failed(e),
            },
            Command::DeleteFile { path } => match self.delete_file(&path) {
                Ok(freed) => Response::Freed { freed },
                Err(e) => Response::Failed(e),
            },
            Command::AddReplicas { hash, nodes } => Response::Replicas {
                known: self.add_replicas(&hash, nodes),
            },
            Command::DropReplicas { hash, nodes } => Response::Replicas {
                known: self.drop_replicas(&hash, &nodes),
            },
            Command::RegisterWorker { id, name } => {
                self.register_worker(id, name, now);
                Response::Done
            }
            Command::DeregisterWorker { id } => Response::Deregistered {
                known: self.deregister_worker(&id),
            },
        }
    }

    /// Forgets request ids older than [`REQUEST_TTL_MS`].
    fn prune_requests(&mut self, now: Millis) {
        let horizon = now.saturating_sub(REQUEST_TTL_MS);
        while let Some((time, id)) = self.request_ages.first().cloned() {
            if time >= horizon {
                break;
            }
            self.request_ages.pop_first();
            self.requests.remove(&id);
            self.touch(Key::Request(id));
        }
    }

    /// Marks a record as changed.
    pub(crate) fn touch(&mut self, key: Key) {
        self.dirty.insert(key);
    }

    /// The replicated clock: the newest time stamped into an applied command.
    pub fn now_ms(&self) -> Millis {
        self.counters.now_ms
    }

    /// The writes that store what changed since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut changes = Vec::with_capacity(dirty.len());
        for key in dirty {
            match key {
                Key::Inputs(job) => match self.inputs.get(&job) {
                    Some(list) => {
                        changes.extend(input_records(job, list).map(|(k, v)| Change::Put(k, v)))
                    }
                    None => {
                        changes.push(Change::DeletePrefix(key.encode()));
                        let mut legacy = vec![LEGACY_INPUT_TAG];
                        legacy.extend_from_slice(&job.to_be_bytes());
                        changes.push(Change::DeletePrefix(legacy));
                    }
                },
                key => match self.encode_value(&key) {
                    Some(v) => changes.push(Change::Put(key.encode(), v)),
                    None => changes.push(Change::Delete(key.encode())),
                },
            }
        }
        changes
    }

    /// Whether the last commands may have made work available; resets the flag.
    pub fn take_work_changed(&mut self) -> bool {
        std::mem::take(&mut self.work_changed)
    }

    fn encode_value(&self, key: &Key) -> Option<Vec<u8>> {
        fn enc<T: Serialize>(v: Option<&T>) -> Option<Vec<u8>> {
            v.and_then(|v| serde_json::to_vec(v).ok())
        }
        match key {
            Key::Counters => enc(Some(&self.counters)),
            Key::Model(name) => enc(self.models.get(name)),
            Key::Job(id) => enc(self.jobs.get(id)),
            Key::Inputs(_) => None,
            Key::Batch(id) => enc(self.batches.get(id)),
            Key::Request(id) => enc(self.requests.get(id)),
            Key::File(path) => enc(self.files.get(path)),
            Key::Blob(hash) => enc(self.blobs.get(hash)),
            Key::Node(id) => enc(self.nodes.get(id)),
            Key::Worker(id) => enc(self.workers.get(id)),
        }
    }

    /// Every record, as stored: the snapshot's content.
    pub fn dump(&self) -> Vec<Record> {
        let keys = std::iter::once(Key::Counters)
            .chain(self.models.keys().cloned().map(Key::Model))
            .chain(self.jobs.keys().copied().map(Key::Job))
            .chain(self.batches.keys().copied().map(Key::Batch))
            .chain(self.requests.keys().cloned().map(Key::Request))
            .chain(self.files.keys().cloned().map(Key::File))
            .chain(self.blobs.keys().cloned().map(Key::Blob))
            .chain(self.nodes.keys().cloned().map(Key::Node))
            .chain(self.workers.keys().cloned().map(Key::Worker));
        let mut records: Vec<Record> = keys
            .filter_map(|k| {
                let v = self.encode_value(&k)?;
                Some((k.encode(), v))
            })
            .collect();
        for (job, list) in &self.inputs {
            records.extend(input_records(*job, list));
        }
        records
    }

    /// Rebuilds a state from stored records (from sled or a snapshot).
    pub fn load<I>(records: I) -> Result<State, DecodeError>
    where
        I: IntoIterator<Item = Record>,
    {
        fn dec<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, DecodeError> {
            serde_json::from_slice(value).map_err(|e| DecodeError {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: e.to_string(),
            })
        }
        let mut state = State::default();
        let mut inputs: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (key, value) in records {
            let Some((&tag, _)) = key.split_first() else {
                continue;
            };
            match tag {
                b'c' => state.counters = dec(&key, &value)?,
                b'm' => {
                    let m: ModelRecord = dec(&key, &value)?;
                    state.models.insert(m.name.clone(), m);
                }
                b'j' => {
                    let j: JobRecord = dec(&key, &value)?;
                    state.jobs.insert(j.id, j);
                }
                // Keys sort by (job, index), so names arrive in input order.
                b'l' => {
                    let id = key_u64(&key, 1)?;
                    let chunk: Vec<String> = dec(&key, &value)?;
                    inputs.entry(id).or_default().extend(chunk);
                }
                LEGACY_INPUT_TAG => {
                    let id = key_u64(&key, 1)?;
                    let name = String::from_utf8(value).map_err(|e| DecodeError {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        reason: e.to_string(),
                    })?;
                    inputs.entry(id).or_default().push(name);
                }
                b'b' => {
                    let b: BatchRecord = dec(&key, &value)?;
                    state.batches.insert(b.id, b);
                }
                b'r' => {
                    let id = String::from_utf8_lossy(&key[1..]).into_owned();
                    let r: Remembered = dec(&key, &value)?;
                    state.request_ages.insert((r.time_ms, id.clone()));
                    state.requests.insert(id, r);
                }
                b'f' => {
                    let f: FileRecord = dec(&key, &value)?;
                    state.files.insert(f.path.clone(), f);
                }
                b'h' => {
                    let b: BlobRecord = dec(&key, &value)?;
                    state.blobs.insert(b.hash.clone(), b);
                }
                b'n' => {
                    let n: NodeRecord = dec(&key, &value)?;
                    state.nodes.insert(n.id.clone(), n);
                }
                b'w' => {
                    let w: WorkerRecord = dec(&key, &value)?;
                    state.workers.insert(w.id.clone(), w);
                }
                _ => {}
            }
        }
        state.inputs = inputs
            .into_iter()
            .map(|(id, v)| (id, Arc::new(v)))
            .collect();
        for batch in state.batches.values() {
            if let BatchState::Leased { request, .. } = &batch.state {
                state.leased.insert(batch.id);
                if !request.is_empty() {
                    state.lease_requests.insert(request.clone(), batch.id);
                }
            }
        }
        state.rebuild_stats();
        state.rebuild_node_bytes();
        Ok(state)
    }

    /// Derives the statistics from the batch records, as applying them one by one did:
    /// completions in the order they were applied (their stamps are monotonic), leases
    /// of batches in flight.
    fn rebuild_stats(&mut self) {
        let mut stats: BTreeMap<u64, JobStatsIndex> = self
            .jobs
            .keys()
            .map(|id| (*id, JobStatsIndex::default()))
            .collect();
        let mut costs: BTreeMap<String, CostWindow> = BTreeMap::new();
        let mut done: Vec<(Millis, BatchId)> = Vec::new();
        for batch in self.batches.values() {
            match &batch.state {
                BatchState::Leased { worker, .. } => {
                    stats.entry(batch.id.job).or_default().leased(worker);
                }
                BatchState::Done {
                    completed_at_ms, ..
                } => {
                    done.push((*completed_at_ms, batch.id));
                }
                BatchState::Pending => {}
            }
        }
        done.sort_unstable();
        for (_, id) in done {
            let Some(batch) = self.batches.get(&id) else {
                continue;
            };
            let BatchState::Done {
                worker,
                compute_ms,
                completed_at_ms,
                leased_at_ms,
                ..
            } = &batch.state
            else {
                continue;
            };
            let len = u64::from(batch.len);
            stats.entry(id.job).or_default().completed(
                worker,
                len,
                *leased_at_ms,
                *completed_at_ms,
                *compute_ms,
            );
            if let Some(job) = self.jobs.get(&id.job) {
                costs
                    .entry(job.model.clone())
                    .or_default()
                    .add(*compute_ms, len);
            }
        }
        self.job_stats = stats;
        self.costs = costs;
    }
}

/// The stored records of a job's input list: consecutive names of about
/// [`INPUT_CHUNK_BYTES`] per record (one name at least), keyed by (job, chunk number).
fn input_records(job: u64, list: &[String]) -> impl Iterator<Item = Record> + '_ {
    let prefix = Key::Inputs(job).encode();
    let mut rest = list;
    let mut chunk = 0u32;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let len = rest
            .iter()
            .take_while(|name| {
                bytes += name.len() + 3;
                bytes <= INPUT_CHUNK_BYTES
            })
            .count()
            .max(1);
        let (names, after) = rest.split_at(len);
        rest = after;
        let mut key = prefix.clone();
        key.extend_from_slice(&chunk.to_be_bytes());
        chunk += 1;
        // A list of strings always serializes.
        Some((key, serde_json::to_vec(names).unwrap_or_default()))
    })
}

fn key_u64(key: &[u8], at: usize) -> Result<u64, DecodeError> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| DecodeError {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "short key".into(),
        })
}

#[cfg(test)]
mod tests;
