//! Fair-time scheduling: which job the next free worker serves, and when a job with nothing
//! running should take the place of a batch a worker holds but has not started.
//!
//! The goal is equal query rates per unit of weight, whatever the models cost. The scheduler
//! is start-time fair queueing over queries: each running job has a virtual time, the queries
//! it was charged (done + in flight, from the replicated counters, less the batches workers
//! hold prepared but have not started) per unit of weight since it joined, and the next free
//! worker gets a batch of the job with the lowest one. A prefetched batch is charged when it
//! starts, not when it is leased: a costly job's prefetch queue holds many seconds of work,
//! and charging it up front would hand the cheap jobs that much ahead of time. Counting
//! worker time instead — each batch charged its expected cost `len × c`, each job entitled to
//! `w × c` — orders the jobs the same way, since `len × c / (w × c) = len / w`: the cost
//! cancels out of the order. What cost × weight decides is the *share of worker time* a job
//! ends up with (a job 4× as costly at the same rate takes 4× the worker time), which
//! [`crate::state::stats::fair_shares`] states from the models' measured costs for the
//! statistics.
//!
//! * A job that joins (is created, started, resumed, or comes back after a leader change)
//!   starts level with the lowest virtual time of the others: it is served next and then in
//!   turn with them, instead of taking every lease until a long history catches up (or, had
//!   it started at their *completed* work, a whole round of their in-flight batches, which
//!   for a costly model starves the others for seconds).
//! * A job with nothing left to hand out keeps no place; when work comes back (an expired
//!   batch) it re-joins no earlier than the others.
//! * A weight change re-bases the job's virtual time, so only queries from then on count at
//!   the new weight.
//! * A batch given back (expired, released, revoked) lowers its job's in-flight count and so
//!   its virtual time: work that was not done is not charged.
//!
//! Per decision the work is O(jobs), never O(batches). All of it is the leader's soft state,
//! rebuilt from the replicated job records after a failover (every job re-joins, level).

use std::collections::HashMap;

use crate::state::jobs::{BatchId, JobRecord, MAX_PASSES};

/// How many forward passes of `batch_size` a new lease holds: enough that the lease is worth
/// about `target_ms` of worker time at `cost_ms_per_query` (the model's measured cost), from 1
/// to [`MAX_PASSES`]. A lease has a fixed cost — its commit, the completion's commit, a
/// results object, a few HTTP calls: ~3–4 ms of CPU on a 2-core machine that also runs the
/// coordinator and a storage node — which a one-image pass of a cheap model (~8 ms) cannot
/// hide. `target_ms` 0 keeps one pass per lease. Fairness is unchanged (the scheduler counts
/// queries, not leases); a lease just grows from one pass to as many as fit the target.
pub fn passes_per_lease(cost_ms_per_query: f64, batch_size: u32, target_ms: u64) -> u32 {
    let pass_ms = cost_ms_per_query * f64::from(batch_size.max(1));
    if target_ms == 0 || !pass_ms.is_finite() || pass_ms <= 0.0 {
        return 1;
    }
    let passes = (target_ms as f64 / pass_ms).ceil();
    passes.clamp(1.0, f64::from(MAX_PASSES)) as u32
}

/// A job's place in the queue.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tag {
    /// Virtual time when the tag was last based.
    base_v: f64,
    /// The job's served queries (done + in flight) at that moment.
    base_served: u64,
    /// The weight the job has had since.
    weight: u32,
    /// Whether it had something to hand out at the last refresh.
    runnable: bool,
}

impl Tag {
    fn vtime(&self, charged: u64) -> f64 {
        let served = charged as f64 - self.base_served as f64;
        self.base_v + served / f64::from(self.weight.max(1))
    }
}

/// The scheduler's state: one tag per running job, and the batches each worker holds
/// prepared but not started (from its last lease call), which are not charged yet.
#[derive(Debug, Default)]
pub struct FairShare {
    tags: HashMap<u64, Tag>,
    prepared: HashMap<String, Vec<Prepared>>,
    /// Online traffic's tag while it has requests queued or running: one more client, whose
    /// served count is the images handed out in online batches (see [`FairShare::online`]).
    online: Option<Tag>,
    /// Online traffic's virtual time at the last look (joiners start no lower than it).
    online_v: Option<f64>,
    /// Where a job or online traffic joining now starts (set by [`FairShare::refresh`]).
    floor: Option<f64>,
}

/// A batch a worker holds but has not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    pub batch: BatchId,
    pub lease_id: u64,
    pub len: u64,
}

impl FairShare {
    pub fn new() -> FairShare {
        FairShare::default()
    }

    /// What `worker` holds prepared now (its lease call lists it).
    pub fn set_prepared(&mut self, worker: &str, prepared: Vec<Prepared>) {
        if prepared.is_empty() {
            self.prepared.remove(worker);
        } else {
            self.prepared.insert(worker.to_string(), prepared);
        }
    }

    /// Keeps only the prepared batches `current` says are still leased as recorded (a batch
    /// given back, expired or done is charged as the counters say).
    pub fn retain_prepared(&mut self, current: impl Fn(&Prepared) -> bool) {
        self.prepared.retain(|_, list| {
            list.retain(&current);
            !list.is_empty()
        });
    }

    /// Queries of `job` charged: done and in flight, less the prepared ones.
    fn charged(&self, job: &JobRecord) -> u64 {
        let prepared: u64 = self
            .prepared
            .values()
            .flatten()
            .filter(|p| p.batch.job == job.id)
            .map(|p| p.len)
            .sum();
        job.served().saturating_sub(prepared)
    }

    /// Brings the tags in line with the replicated job records: drops jobs that stopped
    /// running, lets new and returning jobs join, re-bases weight changes. `running` is every
    /// job in the running state. O(jobs).
    pub fn refresh<'a>(&mut self, running: impl Iterator<Item = &'a JobRecord>) {
        let running: Vec<(&JobRecord, u64)> = running.map(|j| (j, self.charged(j))).collect();
        self.tags
            .retain(|id, _| running.iter().any(|(j, _)| j.id == *id));
        // Where joiners start: the lowest virtual time among the jobs already taking part
        // (runnable at the last refresh, or with work in flight).
        let floor = running
            .iter()
            .filter_map(|(j, charged)| {
                let tag = self.tags.get(&j.id)?;
                (tag.runnable || j.in_flight > 0).then(|| tag.vtime(*charged))
            })
            .chain(self.online_v)
            .min_by(f64::total_cmp);
        self.floor = floor;
        for (job, charged) in running {
            let runnable = job.has_work();
            match self.tags.get_mut(&job.id) {
                None => {
                    self.tags.insert(
                        job.id,
                        Tag {
                            base_v: floor.unwrap_or(0.0),
                            base_served: charged,
                            weight: job.weight,
                            runnable,
                        },
                    );
                }
                Some(tag) => {
                    let v = tag.vtime(charged);
                    if tag.weight != job.weight {
                        *tag = Tag {
                            base_v: v,
                            base_served: charged,
                            weight: job.weight,
                            runnable: tag.runnable,
                        };
                    }
                    if runnable && !tag.runnable && job.in_flight == 0 {
                        // Back after a pause with nothing in flight: no credit for the pause.
                        let v = floor.map_or(v, |f| v.max(f));
                        *tag = Tag {
                            base_v: v,
                            base_served: charged,
                            weight: job.weight,
                            runnable,
                        };
                    }
                    tag.runnable = runnable;
                }
            }
        }
    }

    /// Online traffic's virtual time (after [`FairShare::refresh`]), `served` images handed
    /// out so far at `weight`, or `None` when it is not `active` (nothing queued or
    /// running). Like a job, online traffic that becomes active joins level with the
    /// others, and a weight change re-bases it.
    pub fn online(&mut self, served: u64, weight: u32, active: bool) -> Option<f64> {
        if !active {
            self.online = None;
            self.online_v = None;
            return None;
        }
        let floor = self.floor.unwrap_or(0.0);
        let tag = self.online.get_or_insert(Tag {
            base_v: floor,
            base_served: served,
            weight,
            runnable: true,
        });
        if tag.weight != weight {
            *tag = Tag {
                base_v: tag.vtime(served),
                base_served: served,
                weight,
                runnable: true,
            };
        }
        let v = tag.vtime(served);
        self.online_v = Some(v);
        Some(v)
    }

    /// A job's virtual time (after [`FairShare::refresh`]); `None` if it has no tag.
    pub fn vtime(&self, job: &JobRecord) -> Option<f64> {
        Some(self.tags.get(&job.id)?.vtime(self.charged(job)))
    }

    /// The job to serve next among `candidates` (runnable jobs the worker can run): the
    /// lowest virtual time; ties go to the job with fewer queries in flight, then the older.
    pub fn pick<'a>(&self, candidates: impl Iterator<Item = &'a JobRecord>) -> Option<u64> {
        candidates
            .filter_map(|j| Some((self.vtime(j)?, j.in_flight, j.id)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)))
            .map(|(_, _, id)| id)
    }

    /// Whether a worker holding an unstarted batch of `held` (`len` queries) should give it
    /// back for a batch of another job, and which: the job among `candidates` that
    /// [`FairShare::pick`] would choose next, if it has nothing in flight at all and is not
    /// ahead of `held`, while `held` keeps something running without this batch. This is
    /// what starts a new job on the next lease call instead of after every worker's
    /// prefetched batch; it never takes a job's last batch away, and jobs that both run
    /// never trade places this way.
    pub fn displacer<'a>(
        &self,
        held: &JobRecord,
        len: u64,
        candidates: impl Iterator<Item = &'a JobRecord>,
    ) -> Option<u64> {
        if held.in_flight <= len {
            return None;
        }
        let held_v = self.vtime(held)?;
        let others: Vec<&JobRecord> = candidates.filter(|j| j.id != held.id).collect();
        let best = self.pick(others.iter().copied())?;
        let best = others.iter().find(|j| j.id == best)?;
        (best.in_flight == 0 && self.vtime(best)? <= held_v).then_some(best.id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use idunno_api::job::JobState;

    use super::*;

    #[test]
    fn a_lease_holds_enough_passes_for_the_target_and_no_more_than_the_most() {
        // (ms per query, batch size, target) → passes.
        for (cost, batch, target, passes) in [
            (8.0, 1, 100, 13), // a cheap model at batch 1: 13 passes of 8 ms
            (21.0, 1, 100, 5), // ResNet-18-like
            (46.0, 1, 100, 3), // ResNet-50-like
            (8.0, 8, 100, 2),  // a pass of 64 ms: two
            (21.0, 8, 100, 1), // a pass of 168 ms: one
            (0.5, 1, 100, 16), // never more than the most
            (8.0, 1, 0, 1),    // target 0: one pass
            (0.0, 1, 100, 1),  // no usable cost: one pass
            (f64::NAN, 4, 100, 1),
            (5.0, 0, 100, 16), // batch size 0 counts as 1
        ] {
            assert_eq!(
                passes_per_lease(cost, batch, target),
                passes,
                "{cost} ms/query, batch {batch}, target {target} ms"
            );
        }
    }

    fn job(id: u64, weight: u32) -> JobRecord {
        JobRecord {
            id,
            name: format!("job-{id}"),
            model: "m".into(),
            batch_size: 8,
            weight,
            state: JobState::Running,
            queries: 1_000_000,
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
            created_at_ms: 0,
            started_at_ms: Some(0),
            finished_at_ms: None,
            resumed_at_ms: Some(0),
        }
    }

    /// Simulates `workers` workers, each running one batch at a time of `batch` queries that
    /// takes `cost[job] × batch` time units, scheduled by `FairShare`, for `until` units;
    /// returns the queries each job completed.
    fn simulate(jobs: &mut [JobRecord], cost: &[u64], workers: usize, until: u64) -> Vec<u64> {
        let mut fair = FairShare::new();
        // (finish time, job index, len)
        let mut running: Vec<Option<(u64, usize, u64)>> = vec![None; workers];
        for now in 0..until {
            for slot in running.iter_mut() {
                if let Some((end, j, len)) = *slot {
                    if end <= now {
                        jobs[j].in_flight -= len;
                        jobs[j].done += len;
                        *slot = None;
                    }
                }
                if slot.is_none() {
                    fair.refresh(jobs.iter());
                    let id = fair.pick(jobs.iter().filter(|j| j.has_work())).unwrap();
                    let j = jobs.iter().position(|x| x.id == id).unwrap();
                    let len = u64::from(jobs[j].batch_size);
                    jobs[j].in_flight += len;
                    *slot = Some((now + cost[j] * len, j, len));
                }
            }
        }
        jobs.iter().map(|j| j.done).collect()
    }

    #[test]
    fn jobs_of_different_cost_get_equal_rates() {
        let mut jobs = vec![job(1, 1), job(2, 1)];
        let done = simulate(&mut jobs, &[10, 1], 4, 100_000);
        let gap = done[0].max(done[1]) as f64 / done[0].min(done[1]) as f64 - 1.0;
        assert!(gap < 0.01, "{done:?}");
    }

    #[test]
    fn weight_two_gets_twice_the_rate() {
        let mut jobs = vec![job(1, 2), job(2, 1), job(3, 1)];
        let done = simulate(&mut jobs, &[3, 1, 5], 3, 100_000);
        let ratio = done[0] as f64 / done[1] as f64;
        assert!((ratio - 2.0).abs() < 0.03, "{done:?}");
        assert!(
            (done[1] as f64 / done[2] as f64 - 1.0).abs() < 0.02,
            "{done:?}"
        );
    }

    #[test]
    fn a_joining_job_starts_level_not_behind_a_long_history() {
        let mut fair = FairShare::new();
        let mut a = job(1, 1);
        a.done = 10_000;
        a.in_flight = 32;
        fair.refresh([&a].into_iter());
        let mut b = job(2, 1);
        fair.refresh([&a, &b].into_iter());
        // B starts level with A: served next (fewer in flight), then in turn.
        assert_eq!(fair.vtime(&b), fair.vtime(&a));
        assert_eq!(fair.pick([&a, &b].into_iter()), Some(2));
        b.in_flight = 8;
        assert_eq!(fair.pick([&a, &b].into_iter()), Some(1));
        a.in_flight = 40;
        assert_eq!(fair.pick([&a, &b].into_iter()), Some(2));
    }

    #[test]
    fn a_job_with_nothing_running_displaces_a_prepared_batch_but_never_the_last_one() {
        let mut fair = FairShare::new();
        let mut a = job(1, 1);
        a.done = 100;
        a.in_flight = 16;
        fair.refresh([&a].into_iter());
        let b = job(2, 1);
        fair.refresh([&a, &b].into_iter());
        assert_eq!(fair.displacer(&a, 8, [&a, &b].into_iter()), Some(2));
        // A's only batch in flight stays.
        a.in_flight = 8;
        assert_eq!(fair.displacer(&a, 8, [&a, &b].into_iter()), None);
        // Once B runs something, no more displacing.
        a.in_flight = 16;
        let mut b2 = b.clone();
        b2.in_flight = 8;
        assert_eq!(fair.displacer(&a, 8, [&a, &b2].into_iter()), None);
    }

    #[test]
    fn a_prepared_batch_is_charged_when_it_starts() {
        let mut fair = FairShare::new();
        let mut a = job(1, 1);
        let mut b = job(2, 1);
        fair.refresh([&a, &b].into_iter());
        // B's worker holds 32 queries prepared: not charged, so A is not owed them yet.
        b.in_flight = 32;
        a.in_flight = 8;
        let held = Prepared {
            batch: BatchId { job: 2, seq: 0 },
            lease_id: 1,
            len: 32,
        };
        fair.set_prepared("w1", vec![held]);
        fair.refresh([&a, &b].into_iter());
        assert_eq!(fair.vtime(&b), Some(0.0));
        assert_eq!(fair.pick([&a, &b].into_iter()), Some(2));
        // It started: charged.
        fair.set_prepared("w1", Vec::new());
        assert_eq!(fair.vtime(&b), Some(32.0));
        assert_eq!(fair.pick([&a, &b].into_iter()), Some(1));
        // A batch that is no longer leased as recorded is not held back.
        fair.set_prepared("w1", vec![held]);
        fair.retain_prepared(|p| p.lease_id != 1);
        assert_eq!(fair.vtime(&b), Some(32.0));
    }

    #[test]
    fn a_weight_change_counts_from_then_on() {
        let mut fair = FairShare::new();
        let mut a = job(1, 1);
        let b = job(2, 1);
        fair.refresh([&a, &b].into_iter());
        a.done = 800;
        fair.refresh([&a, &b].into_iter());
        let before = fair.vtime(&a).unwrap();
        a.weight = 4;
        fair.refresh([&a, &b].into_iter());
        assert_eq!(fair.vtime(&a).unwrap(), before);
        a.done = 1_200;
        assert_eq!(fair.vtime(&a).unwrap(), before + 100.0);
    }

    #[test]
    fn online_traffic_joins_level_and_is_charged_per_image() {
        let mut fair = FairShare::new();
        let mut a = job(1, 1);
        a.done = 5_000;
        fair.refresh([&a].into_iter());
        let level = fair.vtime(&a).unwrap();
        // Joining: level with the job, not at zero (which would starve the job).
        assert_eq!(fair.online(0, 2, true), Some(level));
        // 8 images at weight 2 count as 4 queries.
        assert_eq!(fair.online(8, 2, true), Some(level + 4.0));
        // A weight change re-bases: what was served so far stays charged at the old weight.
        assert_eq!(fair.online(16, 1, true), Some(level + 8.0));
        assert_eq!(fair.online(17, 1, true), Some(level + 9.0));
        // Idle drops the tag; coming back re-joins level with the others.
        assert_eq!(fair.online(17, 1, false), None);
        a.done += 100;
        fair.refresh([&a].into_iter());
        assert_eq!(fair.online(50, 1, true), Some(level + 100.0));
    }

    #[test]
    fn a_job_joining_while_online_traffic_runs_starts_level_with_it() {
        let mut fair = FairShare::new();
        fair.refresh(std::iter::empty());
        assert_eq!(fair.online(0, 1, true), Some(0.0));
        assert_eq!(fair.online(800, 1, true), Some(800.0));
        let b = job(2, 1);
        fair.refresh([&b].into_iter());
        assert_eq!(
            fair.vtime(&b),
            Some(800.0),
            "a job starting at 0 would starve online traffic"
        );
    }
}
