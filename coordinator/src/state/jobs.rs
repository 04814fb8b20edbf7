//! Jobs and their batches in the replicated state.
//!
//! Batches are cut lazily: a job keeps a cursor into its input list and a lease takes the next
//! `batch_size` inputs, so a batch-size change applies to the very next lease and a job of a
//! million inputs costs one record until it runs. A batch that comes back (expired or given
//! back) waits in the job's retry queue and is handed out before new inputs.
//! A batch is done exactly once: the first completion for any lease ever issued for it wins.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use idunno_api::job::{BatchInfo, BatchStateInfo, Inputs, Job, JobState};
use idunno_api::Millis;
use serde::{Deserialize, Serialize};

use super::command::{CommandError, LeaseGrant, Response};
use super::{Key, State};

/// Largest batch a job may ask for.
pub const MAX_BATCH_SIZE: u32 = 4096;
/// Largest fair-share weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Most inputs one job may list explicitly: the list travels in one Raft entry, which a follower
/// must take in within a heartbeat. Larger jobs name a prefix instead.
pub const MAX_LISTED_INPUTS: usize = 100_000;
/// Most inputs one job may have.
pub const MAX_INPUTS: usize = 1_000_000;
/// Most compute time one completion may report (a week): more is a worker's bug, not a
/// measurement. The API refuses it; the state saturates whatever reaches it.
pub const MAX_COMPUTE_MS: u64 = 7 * 24 * 3600 * 1000;

/// A batch's identity: its job and its sequence number within the job (`"7-3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchId {
    pub job: u64,
    pub seq: u64,
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.job, self.seq)
    }
}

impl FromStr for BatchId {
    type Err = CommandError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CommandError::Invalid(format!("{s:?} is not a batch id (<job>-<seq>)"));
        let (job, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(BatchId {
            job: job.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// A job's replicated record (its input list is stored apart: it never changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub name: String,
    pub model: String,
    pub batch_size: u32,
    pub weight: u32,
    pub state: JobState,
    pub queries: u64,
    /// Inputs before this index belong to a batch already.
    pub next_input: u64,
    pub next_seq: u64,
    /// Batches handed back (expired or released), handed out again before new inputs.
    pub retry: VecDeque<u64>,
    pub done: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub batches_done: u64,
    pub retries: u64,
    pub compute_ms: u64,
    pub created_at_ms: Millis,
    pub started_at_ms: Option<Millis>,
    pub finished_at_ms: Option<Millis>,
}

impl JobRecord {
    /// True if a lease for this job would hand something out now.
    pub fn has_work(&self) -> bool {
        self.state == JobState::Running
            && (!self.retry.is_empty() || self.next_input < self.queries)
    }

    pub fn to_api(&self, rate_qps: f64) -> Job {
        Job {
            id: self.id,
            name: self.name.clone(),
            model: self.model.clone(),
            batch_size: self.batch_size,
            weight: self.weight,
            state: self.state,
            queries: self.queries,
            done: self.done,
            failed: self.failed,
            in_flight: self.in_flight,
            batches_done: self.batches_done,
            retries: self.retries,
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            compute_ms: self.compute_ms,
            rate_qps,
        }
    }
}

/// A batch's replicated record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: BatchId,
    pub start: u64,
    pub len: u32,
    /// How many times it was handed out.
    pub attempts: u32,
    /// Every lease ever issued for it, with its worker: a late completion of any of them counts.
    pub leases: Vec<(u64, String)>,
    pub state: BatchState,
}

/// pending → leased → done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BatchState {
    Pending,
    Leased {
        worker: String,
        lease_id: u64,
        /// The worker's request id for the lease call, so a retried call gets this same lease.
        request: String,
        leased_at_ms: Millis,
        deadline_ms: Millis,
    },
    Done {
        result: String,
        worker: String,
        failed: u32,
        compute_ms: u64,
        completed_at_ms: Millis,
    },
}

impl BatchRecord {
    pub fn to_api(&self) -> BatchInfo {
        let state = match &self.state {
            BatchState::Pending => BatchStateInfo::Pending,
            BatchState::Leased {
                worker,
                lease_id,
                deadline_ms,
                ..
            } => BatchStateInfo::Leased {
                worker: worker.clone(),
                lease_id: *lease_id,
                attempt: self.attempts,
                deadline_ms: *deadline_ms,
            },
            BatchState::Done {
                result,
                worker,
                failed,
                compute_ms,
                ..
            } => BatchStateInfo::Done {
                result: result.clone(),
                worker: worker.clone(),
                failed: *failed,
                compute_ms: *compute_ms,
            },
        };
        BatchInfo {
            id: self.id.to_string(),
            start: self.start,
            len: self.len,
            state,
        }
    }
}

/// Checks a batch size.
pub fn validate_batch_size(batch_size: u32) -> Result<(), CommandError> {
    if batch_size == 0 || batch_size > MAX_BATCH_SIZE {
        return Err(CommandError::Invalid(format!(
            "batch_size must be between 1 and {MAX_BATCH_SIZE}, not {batch_size}"
        )));
    }
    Ok(())
}

/// Checks a fair-share weight.
pub fn validate_weight(weight: u32) -> Result<(), CommandError> {
    if weight == 0 || weight > MAX_WEIGHT {
        return Err(CommandError::Invalid(format!(
            "weight must be between 1 and {MAX_WEIGHT}, not {weight}"
        )));
    }
    Ok(())
}

fn not_found(job: u64) -> CommandError {
    CommandError::NotFound(format!("no job {job}"))
}

impl State {
    /// The job's record, or a not-found error.
    pub fn job(&self, job: u64) -> Result<&JobRecord, CommandError> {
        self.jobs.get(&job).ok_or_else(|| not_found(job))
    }

    fn job_mut(&mut self, job: u64) -> Result<&mut JobRecord, CommandError> {
        self.touch(Key::Job(job));
        self.jobs.get_mut(&job).ok_or_else(|| not_found(job))
    }

    /// A job's batches, in sequence order.
    pub fn batches_of(&self, job: u64) -> impl Iterator<Item = &BatchRecord> {
        self.batches
            .range(BatchId { job, seq: 0 }..=BatchId { job, seq: u64::MAX })
            .map(|(_, b)| b)
    }

    /// A job's input list.
    pub fn inputs_of(&self, job: u64) -> Option<&Arc<Vec<String>>> {
        self.inputs.get(&job)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_job(
        &mut self,
        name: Option<String>,
        model: String,
        inputs: Inputs,
        batch_size: u32,
        weight: u32,
        start: bool,
        now: Millis,
    ) -> Result<u64, CommandError> {
        validate_batch_size(batch_size)?;
        validate_weight(weight)?;
        if !self.models.contains_key(&model) {
            return Err(CommandError::Invalid(format!(
                "unknown model {model:?}: register it first (POST /v1/models)"
            )));
        }
        if let Some(name) = &name {
            if name.len() > 256 || name.chars().any(char::is_control) {
                return Err(CommandError::Invalid(
                    "job name must be at most 256 characters, without control characters".into(),
                ));
            }
        }
        let inputs = match inputs {
            Inputs::List(list) if list.len() > MAX_LISTED_INPUTS => {
                return Err(CommandError::Invalid(format!(
                    "a job may list at most {MAX_LISTED_INPUTS} inputs, not {}; name a prefix instead",
                    list.len()
                )))
            }
            Inputs::List(list) => list,
            Inputs::Prefix { prefix } => {
                let found = self.files_under(&prefix);
                if found.is_empty() {
                    return Err(CommandError::Invalid(format!(
                        "no files under prefix {prefix:?}"
                    )));
                }
                found
            }
        };
        if inputs.is_empty() {
            return Err(CommandError::Invalid(
                "a job needs at least one input".into(),
            ));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(CommandError::Invalid(format!(
                "a job may list at most {MAX_INPUTS} inputs, not {}",
                inputs.len()
            )));
        }
        if let Some(bad) = inputs.iter().find(|i| i.is_empty() || i.len() > 1024) {
            return Err(CommandError::Invalid(format!(
                "input name {bad:?} must be 1-1024 characters"
            )));
        }
        self.counters.next_job_id += 1;
        self.touch(Key::Counters);
        let id = self.counters.next_job_id;
        let record = JobRecord {
            id,
            name: name.unwrap_or_else(|| format!("job-{id}")),
            model,
            batch_size,
            weight,
            state: if start {
                JobState::Running
            } else {
                JobState::Created
            },
            queries: inputs.len() as u64,
            next_input: 0,
            next_seq: 0,
            retry: VecDeque::new(),
            done: 0,
            failed: 0,
            in_flight: 0,
            batches_done: 0,
            retries: 0,
            compute_ms: 0,
            created_at_ms: now,
            started_at_ms: start.then_some(now),
            finished_at_ms: None,
        };
        self.jobs.insert(id, record);
        self.inputs.insert(id, Arc::new(inputs));
        self.touch(Key::Job(id));
        self.touch(Key::Inputs(id));
        self.work_changed = true;
        Ok(id)
    }

    pub(super) fn update_job(
        &mut self,
        job: u64,
        batch_size: Option<u32>,
        weight: Option<u32>,
    ) -> Result<u64, CommandError> {
        if let Some(b) = batch_size {
            validate_batch_size(b)?;
        }
        if let Some(w) = weight {
            validate_weight(w)?;
        }
        let record = self.job_mut(job)?;
        if let Some(b) = batch_size {
            record.batch_size = b;
        }
        if let Some(w) = weight {
            record.weight = w;
        }
        Ok(job)
    }

    pub(super) fn start_job(&mut self, job: u64, now: Millis) -> Result<u64, CommandError> {
        let record = self.job_mut(job)?;
        match record.state {
            JobState::Done => {
                return Err(CommandError::Conflict(format!("job {job} is already done")))
            }
            JobState::Created | JobState::Stopped => {
                record.state = JobState::Running;
                record.started_at_ms.get_or_insert(now);
            }
            JobState::Running => {}
        }
        self.work_changed = true;
        Ok(job)
    }

    pub(super) fn stop_job(&mut self, job: u64) -> Result<u64, CommandError> {
        let record = self.job_mut(job)?;
        match record.state {
            JobState::Done => Err(CommandError::Conflict(format!("job {job} is already done"))),
            _ => {
                record.state = JobState::Stopped;
                Ok(job)
            }
        }
    }

    pub(super) fn delete_job(&mut self, job: u64) -> Result<(), CommandError> {
        self.jobs.remove(&job).ok_or_else(|| not_found(job))?;
        self.touch(Key::Job(job));
        self.inputs.remove(&job);
        self.touch(Key::Inputs(job));
        let ids: Vec<BatchId> = self.batches_of(job).map(|b| b.id).collect();
        for id in ids {
            if let Some(batch) = self.batches.remove(&id) {
                self.forget_lease(&batch);
            }
            self.touch(Key::Batch(id));
        }
        Ok(())
    }

    /// Hands the next batch of `job` to `worker`: a returned batch first, then new inputs.
    pub(super) fn lease(
        &mut self,
        worker: String,
        job: u64,
        request: String,
        lease_timeout_ms: u64,
        now: Millis,
    ) -> Response {
        // A retried lease call gets the lease its first attempt got.
        if let Some(id) = self.lease_requests.get(&request).copied() {
            if let Some(grant) = self.grant_of(id) {
                return Response::Leased(grant);
            }
        }
        let Some(record) = self.jobs.get_mut(&job) else {
            return Response::NoWork;
        };
        if !record.has_work() {
            return Response::NoWork;
        }
        let id = if let Some(seq) = record.retry.pop_front() {
            BatchId { job, seq }
        } else {
            let len = u64::from(record.batch_size).min(record.queries - record.next_input);
            let id = BatchId {
                job,
                seq: record.next_seq,
            };
            self.batches.insert(
                id,
                BatchRecord {
                    id,
                    start: record.next_input,
                    len: len as u32,
                    attempts: 0,
                    leases: Vec::new(),
                    state: BatchState::Pending,
                },
            );
            record.next_seq += 1;
            record.next_input += len;
            id
        };
        self.touch(Key::Job(job));
        self.touch(Key::Batch(id));
        self.counters.next_lease_id += 1;
        self.touch(Key::Counters);
        let lease_id = self.counters.next_lease_id;
        let Some(batch) = self.batches.get_mut(&id) else {
            return Response::Failed(CommandError::Conflict(format!("batch {id} vanished")));
        };
        batch.attempts = batch.attempts.saturating_add(1);
        batch.leases.push((lease_id, worker.clone()));
        batch.state = BatchState::Leased {
            worker,
            lease_id,
            request: request.clone(),
            leased_at_ms: now,
            deadline_ms: now.saturating_add(lease_timeout_ms),
        };
        let len = u64::from(batch.len);
        if let Some(record) = self.jobs.get_mut(&job) {
            record.in_flight = record.in_flight.saturating_add(len);
        }
        self.leased.insert(id);
        if !request.is_empty() {
            self.lease_requests.insert(request, id);
        }
        match self.grant_of(id) {
            Some(grant) => Response::Leased(grant),
            None => Response::NoWork,
        }
    }

    /// The grant a leased batch was handed out with.
    fn grant_of(&self, id: BatchId) -> Option<LeaseGrant> {
        let batch = self.batches.get(&id)?;
        let BatchState::Leased {
            lease_id,
            deadline_ms,
            ..
        } = &batch.state
        else {
            return None;
        };
        let inputs = self.inputs.get(&id.job)?;
        let start = batch.start as usize;
        let end = (start + batch.len as usize).min(inputs.len());
        Some(LeaseGrant {
            batch: id,
            lease_id: *lease_id,
            attempt: batch.attempts,
            deadline_ms: *deadline_ms,
            start: batch.start,
            inputs: inputs
                .get(start..end)
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
        })
    }

    /// Drops a batch's entries from the lease indexes.
    fn forget_lease(&mut self, batch: &BatchRecord) {
        self.leased.remove(&batch.id);
        if let BatchState::Leased { request, .. } = &batch.state {
            if !request.is_empty() {
                self.lease_requests.remove(request);
            }
        }
    }

    pub(super) fn complete(
        &mut self,
        id: BatchId,
        lease_id: u64,
        result: String,
        failed: u32,
        compute_ms: u64,
        now: Millis,
    ) -> Result<bool, CommandError> {
        if !self.jobs.contains_key(&id.job) {
            return Err(not_found(id.job));
        }
        let batch = self
            .batches
            .get(&id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(format!("no batch {id}")))?;
        let Some((_, worker)) = batch.leases.iter().find(|(l, _)| *l == lease_id) else {
            return Err(CommandError::Conflict(format!(
                "lease {lease_id} was never issued for batch {id}"
            )));
        };
        let len = u64::from(batch.len);
        match &batch.state {
            BatchState::Done { .. } => return Ok(false),
            BatchState::Leased { .. } => {
                self.forget_lease(&batch);
                if let Some(job) = self.jobs.get_mut(&id.job) {
                    job.in_flight -= len.min(job.in_flight);
                }
            }
            BatchState::Pending => {
                if let Some(job) = self.jobs.get_mut(&id.job) {
                    job.retry.retain(|seq| *seq != id.seq);
                }
            }
        }
        let worker = worker.clone();
        if let Some(b) = self.batches.get_mut(&id) {
            b.state = BatchState::Done {
                result,
                worker,
                failed: failed.min(batch.len),
                compute_ms,
                completed_at_ms: now,
            };
        }
        self.touch(Key::Batch(id));
        // Counters that add up what workers report saturate: a completion, whatever numbers
        // it carries, must never make apply panic on every replica.
        let record = self.job_mut(id.job)?;
        record.done = record.done.saturating_add(len);
        record.failed = record
            .failed
            .saturating_add(u64::from(failed.min(batch.len)));
        record.batches_done = record.batches_done.saturating_add(1);
        record.compute_ms = record.compute_ms.saturating_add(compute_ms);
        if record.done >= record.queries {
            record.state = JobState::Done;
            record.finished_at_ms = Some(now);
        }
        Ok(true)
    }

    /// Puts a leased batch back in its job's queue (at the front if `urgent`).
    fn requeue(&mut self, id: BatchId, lease_id: u64, urgent: bool) -> bool {
        let Some(batch) = self.batches.get(&id) else {
            return false;
        };
        match &batch.state {
            BatchState::Leased { lease_id: l, .. } if *l == lease_id => {}
            _ => return false,
        }
        let batch = batch.clone();
        self.forget_lease(&batch);
        if let Some(b) = self.batches.get_mut(&id) {
            b.state = BatchState::Pending;
        }
        self.touch(Key::Batch(id));
        self.touch(Key::Job(id.job));
        if let Some(job) = self.jobs.get_mut(&id.job) {
            job.in_flight -= u64::from(batch.len).min(job.in_flight);
            job.retries = job.retries.saturating_add(1);
            if urgent {
                job.retry.push_front(id.seq);
            } else {
                job.retry.push_back(id.seq);
            }
        }
        self.work_changed = true;
        true
    }

    /// Gives a lease back: `Ok(false)` if it is no longer the batch's current lease (done,
    /// expired and handed out again, or never issued for it).
    pub(super) fn release(&mut self, id: BatchId, lease_id: u64) -> Result<bool, CommandError> {
        if !self.batches.contains_key(&id) {
            return Err(CommandError::NotFound(format!("no batch {id}")));
        }
        Ok(self.requeue(id, lease_id, true))
    }

    pub(super) fn expire(&mut self, leases: &[(BatchId, u64)]) -> usize {
        leases
            .iter()
            .filter(|(id, lease)| self.requeue(*id, *lease, false))
            .count()
    }

    /// Leased batches: (batch, lease id, worker, leased at, deadline). For the leader's expiry.
    pub fn leases(&self) -> impl Iterator<Item = (BatchId, u64, &str, Millis, Millis)> {
        self.leased
            .iter()
            .filter_map(|id| match &self.batches.get(id)?.state {
                BatchState::Leased {
                    worker,
                    lease_id,
                    leased_at_ms,
                    deadline_ms,
                    ..
                } => Some((*id, *lease_id, worker.as_str(), *leased_at_ms, *deadline_ms)),
                _ => None,
            })
    }

    /// Jobs that a lease would hand something out for now.
    pub fn runnable_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().filter(|j| j.has_work())
    }
}
