//! Jobs and their batches in the replicated state.
//!
//! Batches are cut lazily: a job keeps a cursor into its input list and a lease takes the next
//! `passes × batch_size` inputs (the leader chooses `passes`, 1 to [`MAX_PASSES`], so that a
//! lease of a cheap model is worth its fixed cost; the worker runs the batch in forward passes
//! of `batch_size`), so a batch-size change applies to the very next lease and a job of a
//! million inputs costs one record until it runs. A batch that comes back (expired or given
//! back) waits in the job's retry queue and is handed out before new inputs.
//! A batch is done exactly once: the first completion for any lease ever issued for it wins.
//!
//! A batch given back whose passes are larger than its job's batch size now (the batch size
//! shrank) is dissolved: its inputs go to the job's returned ranges and are cut
//! again at the new size (a late completion of one of its old leases then finds no batch and
//! is refused; its queries run again in the new batches).

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use idunno_api::job::{BatchInfo, BatchStateInfo, Inputs, Job, JobState};
use idunno_api::Millis;
use serde::{Deserialize, Serialize};

use super::command::{CommandError, LeaseGrant, Response};
use super::files::{FreedBlob, NewVersion};
use super::stats::JobStatsIndex;
use super::{Key, State};

/// Largest batch a job may ask for.
pub const MAX_BATCH_SIZE: u32 = 4096;
/// Most forward passes one batch holds: a lease of a cheap model at a small batch size takes
/// several passes' inputs, so the per-lease work (two commits, a results object, the HTTP
/// calls) is shared by more queries. A batch never holds more than [`MAX_BATCH_SIZE`] inputs.
pub const MAX_PASSES: u32 = 16;
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
    /// Input ranges `(start, len)` of dissolved batches, cut again at the current batch size
    /// after `retry` and before new inputs.
    #[serde(default)]
    pub returned: VecDeque<(u64, u64)>,
    pub done: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub batches_done: u64,
    pub retries: u64,
    pub compute_ms: u64,
    pub created_at_ms: Millis,
    pub started_at_ms: Option<Millis>,
    pub finished_at_ms: Option<Millis>,
    /// When it last went to running (created running, or started after a stop).
    #[serde(default)]
    pub resumed_at_ms: Option<Millis>,
}

impl JobRecord {
    /// The most passes of its batch size one of this job's batches holds: [`MAX_PASSES`], and
    /// no more than [`MAX_BATCH_SIZE`] inputs in all (what a results object may hold).
    fn most_passes(&self) -> u32 {
        (MAX_BATCH_SIZE / self.batch_size.max(1)).clamp(1, MAX_PASSES)
    }

    /// True if a lease for this job would hand something out now.
    pub fn has_work(&self) -> bool {
        self.state == JobState::Running
            && (!self.retry.is_empty()
                || !self.returned.is_empty()
                || self.next_input < self.queries)
    }

    /// Queries handed out and not given back: done, or in flight. What the scheduler counts
    /// as served.
    pub fn served(&self) -> u64 {
        self.done.saturating_add(self.in_flight)
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
            resumed_at_ms: self.resumed_at_ms.or(self.started_at_ms),
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
    /// When each of `leases` was granted (same order; shorter in records of earlier versions).
    #[serde(default)]
    pub lease_times: Vec<Millis>,
    /// Images per forward pass: its job's batch size when it was cut (the batch holds one or
    /// more passes). 0 in records of earlier versions: the whole batch is one pass.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pass: u32,
    pub state: BatchState,
}

/// For `skip_serializing_if`: a count that is 0 is left out of the stored form.
pub(super) fn is_zero(n: &u32) -> bool {
    *n == 0
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
        /// When the lease whose completion counted was granted (0: not recorded).
        #[serde(default)]
        leased_at_ms: Millis,
    },
}

impl BatchRecord {
    /// Images per forward pass of this batch.
    pub fn pass_size(&self) -> u32 {
        match self.pass {
            0 => self.len,
            pass => pass,
        }
    }

    /// Whether the batch may run as it was cut: its passes are no larger than its job's batch
    /// size now (a batch cut before the batch size shrank is cut again instead).
    pub fn fits(&self, job: &JobRecord) -> bool {
        self.pass_size() <= job.batch_size
    }

    pub fn to_api(&self) -> BatchInfo {
        let state = match &self.state {
            BatchState::Pending => BatchStateInfo::Pending,
            BatchState::Leased {
                worker,
                lease_id,
                deadline_ms,
                leased_at_ms,
                ..
            } => BatchStateInfo::Leased {
                worker: worker.clone(),
                lease_id: *lease_id,
                attempt: self.attempts,
                deadline_ms: *deadline_ms,
                leased_at_ms: *leased_at_ms,
            },
            BatchState::Done {
                result,
                worker,
                failed,
                compute_ms,
                completed_at_ms,
                leased_at_ms,
            } => BatchStateInfo::Done {
                result: result.clone(),
                worker: worker.clone(),
                failed: *failed,
                compute_ms: *compute_ms,
                leased_at_ms: *leased_at_ms,
                completed_at_ms: *completed_at_ms,
            },
        };
        BatchInfo {
            id: self.id.to_string(),
            start: self.start,
            len: self.len,
            pass_size: self.pass_size(),
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
            returned: VecDeque::new(),
            done: 0,
            failed: 0,
            in_flight: 0,
            batches_done: 0,
            retries: 0,
            compute_ms: 0,
            created_at_ms: now,
            started_at_ms: start.then_some(now),
            finished_at_ms: None,
            resumed_at_ms: start.then_some(now),
        };
        self.jobs.insert(id, record);
        self.inputs.insert(id, Arc::new(inputs));
        self.job_stats.insert(id, JobStatsIndex::default());
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
        // Workers holding batches cut at the old size hear of it at once (and the
        // scheduler re-weighs).
        self.work_changed = true;
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
                record.resumed_at_ms = Some(now);
            }
            JobState::Running => {}
        }
        self.work_changed = true;
        Ok(job)
    }

    /// Stops handing out the job's batches. Batches leased but not started are revoked by
    /// the leader's answers to the workers' lease calls (they give them back); batches being
    /// computed finish and count.
    pub(super) fn stop_job(&mut self, job: u64) -> Result<u64, CommandError> {
        let record = self.job_mut(job)?;
        match record.state {
            JobState::Done => Err(CommandError::Conflict(format!("job {job} is already done"))),
            _ => {
                record.state = JobState::Stopped;
                self.work_changed = true;
                Ok(job)
            }
        }
    }

    pub(super) fn delete_job(&mut self, job: u64) -> Result<(), CommandError> {
        self.jobs.remove(&job).ok_or_else(|| not_found(job))?;
        self.touch(Key::Job(job));
        self.job_stats.remove(&job);
        self.work_changed = true;
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

    /// Hands the next batch of `job` to `worker`: a returned batch first, then new inputs —
    /// `passes` forward passes' worth (at least one, at most [`MAX_PASSES`]).
    pub(super) fn lease(
        &mut self,
        worker: String,
        job: u64,
        passes: u32,
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
            let passes = passes.clamp(1, record.most_passes());
            let size = u64::from(record.batch_size) * u64::from(passes);
            let (start, len) = match record.returned.pop_front() {
                Some((start, len)) if len > size => {
                    record.returned.push_front((start + size, len - size));
                    (start, size)
                }
                Some(range) => range,
                None => {
                    let start = record.next_input;
                    let len = size.min(record.queries - start);
                    record.next_input += len;
                    (start, len)
                }
            };
            let id = BatchId {
                job,
                seq: record.next_seq,
            };
            record.next_seq += 1;
            self.batches.insert(
                id,
                BatchRecord {
                    id,
                    start,
                    len: len as u32,
                    attempts: 0,
                    leases: Vec::new(),
                    lease_times: Vec::new(),
                    pass: record.batch_size,
                    state: BatchState::Pending,
                },
            );
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
        // Records of earlier versions have no lease times: pad, so the two lists line up.
        batch.lease_times.resize(batch.leases.len(), 0);
        batch.leases.push((lease_id, worker.clone()));
        batch.lease_times.push(now);
        self.job_stats.entry(job).or_default().leased(&worker);
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

    /// The lease a worker's lease call with this request id got, while it lasts: a call
    /// retried (or re-sent after the worker gave up waiting) gets the same lease.
    pub fn lease_for_request(&self, request: &str) -> Option<LeaseGrant> {
        if request.is_empty() {
            return None;
        }
        self.grant_of(*self.lease_requests.get(request)?)
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

    /// Whether a completion of batch `id` under `lease_id` would count: false if the batch is
    /// done already; an error if there is no such job or batch, or the lease was never
    /// issued for it.
    pub fn completion_counts(&self, id: BatchId, lease_id: u64) -> Result<bool, CommandError> {
        if !self.jobs.contains_key(&id.job) {
            return Err(not_found(id.job));
        }
        let batch = self
            .batches
            .get(&id)
            .ok_or_else(|| CommandError::NotFound(format!("no batch {id}")))?;
        if !batch.leases.iter().any(|(l, _)| *l == lease_id) {
            return Err(CommandError::Conflict(format!(
                "lease {lease_id} was never issued for batch {id}"
            )));
        }
        Ok(!matches!(batch.state, BatchState::Done { .. }))
    }

    /// A completion that carries its results object (`results`, already stored on storage
    /// nodes): the object becomes a version of `result` only if the completion counts, in the
    /// same entry. The blob of one that does not count is freed, unless a version uses the
    /// same content (a retried completion of the batch's own results); one that fails leaves
    /// its copies to reconciliation, as a failed put does.
    pub(super) fn complete_with_results(
        &mut self,
        (id, lease_id): (BatchId, u64),
        result: String,
        results: Option<NewVersion>,
        failed: u32,
        compute_ms: u64,
        now: Millis,
    ) -> Response {
        let mut freed = Vec::new();
        if let Some(v) = results {
            match self.completion_counts(id, lease_id) {
                Err(e) => return Response::Failed(e),
                Ok(false) => {
                    if self.blob(&v.hash).is_none() {
                        freed.push(FreedBlob {
                            hash: v.hash,
                            replicas: v.replicas,
                        });
                    }
                    return Response::Completed {
                        accepted: false,
                        freed,
                    };
                }
                Ok(true) => {
                    let put = self.put_version(
                        result.clone(),
                        v.hash,
                        v.size,
                        v.replicas,
                        v.target,
                        v.keep,
                        now,
                    );
                    match put {
                        Ok((_, pushed_out)) => freed = pushed_out,
                        Err(e) => return Response::Failed(e),
                    }
                }
            }
        }
        match self.complete(id, lease_id, result, failed, compute_ms, now) {
            Ok(accepted) => Response::Completed { accepted, freed },
            Err(e) => Response::Failed(e),
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
        if !self.completion_counts(id, lease_id)? {
            return Ok(false);
        }
        let Some(batch) = self.batches.get(&id).cloned() else {
            return Ok(false);
        };
        let Some(position) = batch.leases.iter().position(|(l, _)| *l == lease_id) else {
            return Ok(false);
        };
        let worker = &batch.leases[position].1;
        let leased_at_ms = batch.lease_times.get(position).copied().unwrap_or(0);
        let len = u64::from(batch.len);
        match &batch.state {
            BatchState::Done { .. } => return Ok(false),
            BatchState::Leased { worker: holder, .. } => {
                self.forget_lease(&batch);
                if let Some(stats) = self.job_stats.get_mut(&id.job) {
                    stats.lease_ended(holder);
                }
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
        let stats = self.job_stats.entry(id.job).or_default();
        stats.completed(&worker, len, leased_at_ms, now, compute_ms);
        if let Some(model) = self.jobs.get(&id.job).map(|j| j.model.clone()) {
            self.costs.entry(model).or_default().add(compute_ms, len);
        }
        if let Some(b) = self.batches.get_mut(&id) {
            b.state = BatchState::Done {
                result,
                worker,
                failed: failed.min(batch.len),
                compute_ms,
                completed_at_ms: now,
                leased_at_ms,
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

    /// Puts a leased batch back in its job's queue (at the front if `urgent`). A batch
    /// longer than its job's batch size now is dissolved into a returned range instead, so
    /// that its inputs are cut again at the new size.
    fn requeue(&mut self, id: BatchId, lease_id: u64, urgent: bool) -> bool {
        let Some(batch) = self.batches.get(&id) else {
            return false;
        };
        let holder = match &batch.state {
            BatchState::Leased {
                lease_id: l,
                worker,
                ..
            } if *l == lease_id => worker.clone(),
            _ => return false,
        };
        let batch = batch.clone();
        self.forget_lease(&batch);
        if let Some(stats) = self.job_stats.get_mut(&id.job) {
            stats.lease_ended(&holder);
        }
        self.touch(Key::Batch(id));
        self.touch(Key::Job(id.job));
        let dissolve = self.jobs.get(&id.job).is_some_and(|job| !batch.fits(job));
        if dissolve {
            self.batches.remove(&id);
        } else if let Some(b) = self.batches.get_mut(&id) {
            b.state = BatchState::Pending;
        }
        if let Some(job) = self.jobs.get_mut(&id.job) {
            job.in_flight -= u64::from(batch.len).min(job.in_flight);
            job.retries = job.retries.saturating_add(1);
            let range = (batch.start, u64::from(batch.len));
            match (dissolve, urgent) {
                (true, true) => job.returned.push_front(range),
                (true, false) => job.returned.push_back(range),
                (false, true) => job.retry.push_front(id.seq),
                (false, false) => job.retry.push_back(id.seq),
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

    /// Jobs in the running state (with or without anything left to hand out).
    pub fn running_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().filter(|j| j.state == JobState::Running)
    }

    /// The derived statistics of a job (empty for a job with no batches yet).
    pub fn job_stats(&self, job: u64) -> Option<&JobStatsIndex> {
        self.job_stats.get(&job)
    }

    /// A model's cost estimate in worker milliseconds per query: measured over its last
    /// batches, else seeded from its architecture.
    pub fn cost_ms_per_query(&self, model: &str) -> f64 {
        if let Some(ms) = self.costs.get(model).and_then(|w| w.ms_per_query()) {
            return ms.max(0.001);
        }
        match self.models.get(model) {
            Some(m) => super::stats::seed_cost_ms(m.arch, m.cost_ms),
            None => 10.0,
        }
    }
}
