//! Job statistics derived from the replicated batch records: per-query latency and compute
//! time distributions, which workers serve each job, recent completions (rates and shares of
//! worker time), and each model's measured cost per query.
//!
//! Nothing here is stored or replicated as such: [`State::apply`](super::State::apply) keeps
//! it up to date and [`State::load`](super::State::load) rebuilds it from the batch records,
//! so every coordinator derives the same numbers from the same log position and a new leader
//! has them at once. Time comes only from the records (lease and completion stamps); a
//! reader says where its window ends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use idunno_api::arch::Arch;
use idunno_api::job::{Distribution, JobState, JobStats, JobWorker};
use idunno_api::Millis;
use sketches_ddsketch::{Config, DDSketch};

use super::command::CommandError;
use super::jobs::JobRecord;
use super::State;

/// The window of a job's rate and of the shares of worker time (C1).
pub const RATE_WINDOW_MS: u64 = 10_000;

/// How long completions are kept for rates and shares: the window, and room for a reader
/// whose clock is ahead or behind.
const RECENT_KEEP_MS: u64 = 60_000;

/// Completed batches a model's cost estimate averages over.
const COST_WINDOW: usize = 32;

/// Worker throughput assumed before a model's first completion, in GFLOP per second: turns an
/// architecture's FLOPs into a first cost estimate (a 2-core worker runs ResNet-50 at about
/// 160 and EfficientNet-Lite0 at about 80).
pub const SEED_GFLOPS_PER_S: f64 = 100.0;

/// A distribution of per-query times: exact count, mean and variance, percentiles from a
/// DDSketch (1 % relative error, mergeable, a few KiB however many samples).
#[derive(Clone)]
pub struct Summary {
    sketch: DDSketch,
    count: u64,
    sum: f64,
    sum_sq: f64,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            sketch: DDSketch::new(Config::defaults()),
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
        }
    }
}

impl fmt::Debug for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Summary")
            .field("count", &self.count)
            .field("sum", &self.sum)
            .finish()
    }
}

impl Summary {
    /// Counts `times` queries that each took `value` ms.
    pub fn add(&mut self, value: f64, times: u64) {
        if times == 0 || !value.is_finite() || value < 0.0 {
            return;
        }
        self.sketch.add_with_count(value, times);
        self.count = self.count.saturating_add(times);
        self.sum += value * times as f64;
        self.sum_sq += value * value * times as f64;
    }

    /// Queries counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean, (population) standard deviation and the usual percentiles.
    pub fn to_api(&self) -> Distribution {
        if self.count == 0 {
            return Distribution::default();
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let q = |q: f64| self.sketch.quantile(q).ok().flatten().unwrap_or(0.0);
        Distribution {
            count: self.count,
            mean,
            std: var.sqrt(),
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}

/// One worker's part in one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerTally {
    pub batches_in_flight: u64,
    pub queries_done: u64,
}

/// One completed batch, for rates and shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    pub at_ms: Millis,
    pub queries: u64,
    /// The worker's compute time of the batch: busy from `at_ms - compute_ms` to `at_ms`.
    pub compute_ms: u64,
}

/// Everything derived about one job.
#[derive(Debug, Clone, Default)]
pub struct JobStatsIndex {
    pub latency: Summary,
    pub compute: Summary,
    pub workers: BTreeMap<String, WorkerTally>,
    /// Completions of the last [`RECENT_KEEP_MS`], oldest first.
    pub recent: VecDeque<Completed>,
}

impl JobStatsIndex {
    /// Queries completed in `(start, end]`.
    pub fn completed_between(&self, start: Millis, end: Millis) -> u64 {
        self.recent
            .iter()
            .filter(|c| c.at_ms > start && c.at_ms <= end)
            .map(|c| c.queries)
            .sum()
    }

    /// Milliseconds of worker compute inside `(start, end]`: each completed batch counts for
    /// the part of its compute interval that falls inside.
    pub fn busy_between(&self, start: Millis, end: Millis) -> u64 {
        self.recent
            .iter()
            .map(|c| {
                let from = c.at_ms.saturating_sub(c.compute_ms).max(start);
                let to = c.at_ms.min(end);
                to.saturating_sub(from)
            })
            .sum()
    }

    /// The API view of the workers, with their names.
    pub fn workers_api(&self, name_of: impl Fn(&str) -> String) -> Vec<JobWorker> {
        self.workers
            .iter()
            .map(|(id, t)| JobWorker {
                id: id.clone(),
                name: name_of(id),
                current: t.batches_in_flight > 0,
                batches_in_flight: t.batches_in_flight,
                queries_done: t.queries_done,
            })
            .collect()
    }

    pub(super) fn leased(&mut self, worker: &str) {
        let tally = self.workers.entry(worker.to_string()).or_default();
        tally.batches_in_flight = tally.batches_in_flight.saturating_add(1);
    }

    pub(super) fn lease_ended(&mut self, worker: &str) {
        if let Some(t) = self.workers.get_mut(worker) {
            t.batches_in_flight = t.batches_in_flight.saturating_sub(1);
        }
    }

    /// A batch of `queries` completed by `worker` at `at_ms`, leased at `leased_at_ms`
    /// (0: unknown), after `compute_ms` of compute.
    pub(super) fn completed(
        &mut self,
        worker: &str,
        queries: u64,
        leased_at_ms: Millis,
        at_ms: Millis,
        compute_ms: u64,
    ) {
        let tally = self.workers.entry(worker.to_string()).or_default();
        tally.queries_done = tally.queries_done.saturating_add(queries);
        if leased_at_ms > 0 {
            self.latency
                .add(at_ms.saturating_sub(leased_at_ms) as f64, queries);
        }
        if queries > 0 {
            self.compute
                .add(compute_ms as f64 / queries as f64, queries);
        }
        self.recent.push_back(Completed {
            at_ms,
            queries,
            compute_ms,
        });
        let horizon = at_ms.saturating_sub(RECENT_KEEP_MS);
        while self.recent.front().is_some_and(|c| c.at_ms < horizon) {
            self.recent.pop_front();
        }
    }
}

/// A model's measured cost: compute time and queries of its last [`COST_WINDOW`] batches.
#[derive(Debug, Clone, Default)]
pub struct CostWindow {
    batches: VecDeque<(u64, u64)>,
    compute_ms: u64,
    queries: u64,
}

impl CostWindow {
    pub(super) fn add(&mut self, compute_ms: u64, queries: u64) {
        if queries == 0 {
            return;
        }
        // What workers report is bounded by the API, not here: nothing may overflow.
        let compute_ms = compute_ms.min(u64::MAX / (COST_WINDOW as u64 + 1));
        self.batches.push_back((compute_ms, queries));
        self.compute_ms = self.compute_ms.saturating_add(compute_ms);
        self.queries = self.queries.saturating_add(queries);
        if self.batches.len() > COST_WINDOW {
            if let Some((c, q)) = self.batches.pop_front() {
                self.compute_ms = self.compute_ms.saturating_sub(c);
                self.queries = self.queries.saturating_sub(q);
            }
        }
    }

    /// Worker milliseconds per query, if any batch was measured.
    pub fn ms_per_query(&self) -> Option<f64> {
        (self.queries > 0).then(|| self.compute_ms as f64 / self.queries as f64)
    }
}

/// A first cost estimate for an architecture (ms per query), before any measurement: the
/// declared cost of a synthetic model, else FLOPs at [`SEED_GFLOPS_PER_S`].
pub fn seed_cost_ms(arch: Arch, declared_ms: Option<u32>) -> f64 {
    if let Some(ms) = declared_ms {
        return f64::from(ms.max(1));
    }
    match arch.gflops() {
        g if g > 0.0 => g / SEED_GFLOPS_PER_S * 1000.0,
        _ => 10.0,
    }
}

impl State {
    /// Where a job's rate window ends when read at `now`: `now`, or when a done job finished.
    fn window_end(job: &JobRecord, now: Millis) -> Millis {
        match (job.state, job.finished_at_ms) {
            (JobState::Done, Some(finished)) => finished.min(now),
            _ => now,
        }
    }

    /// C1: queries completed in the last [`RATE_WINDOW_MS`] ÷ min(window, time since the job
    /// was last started), read at wall-clock `now` (a done job's window ends when it finished).
    pub fn job_rate(&self, job: &JobRecord, now: Millis) -> f64 {
        let Some(since) = job.resumed_at_ms.or(job.started_at_ms) else {
            return 0.0;
        };
        let Some(stats) = self.job_stats.get(&job.id) else {
            return 0.0;
        };
        let end = Self::window_end(job, now);
        let start = end.saturating_sub(RATE_WINDOW_MS).max(since);
        let span_ms = end.saturating_sub(start).max(1);
        stats.completed_between(start, end) as f64 * 1000.0 / span_ms as f64
    }

    /// `GET /v1/jobs/{id}/stats` read at wall-clock `now`.
    pub fn job_stats_view(&self, id: u64, now: Millis) -> Result<JobStats, CommandError> {
        let job = self.job(id)?;
        let empty = JobStatsIndex::default();
        let stats = self.job_stats.get(&id).unwrap_or(&empty);
        let end = Self::window_end(job, now);
        let start = end.saturating_sub(RATE_WINDOW_MS);
        let busy: u64 = self
            .job_stats
            .values()
            .map(|s| s.busy_between(start, end))
            .sum();
        let share = if busy > 0 {
            stats.busy_between(start, end) as f64 / busy as f64
        } else {
            0.0
        };
        let running: Vec<(u64, u32, f64)> = self
            .running_jobs()
            .map(|j| (j.id, j.weight, self.cost_ms_per_query(&j.model)))
            .collect();
        let fair_share = fair_shares(&running).get(&id).copied().unwrap_or(0.0);
        let rate_qps = self.job_rate(job, now);
        let remaining = job.queries.saturating_sub(job.done);
        let eta_s =
            (rate_qps > 0.0 && job.state == JobState::Running).then(|| remaining as f64 / rate_qps);
        Ok(JobStats {
            id,
            state: job.state,
            queries: job.queries,
            done: job.done,
            failed: job.failed,
            in_flight: job.in_flight,
            rate_qps,
            latency_ms: stats.latency.to_api(),
            compute_ms: stats.compute.to_api(),
            workers: stats.workers_api(|w| self.worker_name(w)),
            share,
            fair_share,
            cost_ms_per_query: self.cost_ms_per_query(&job.model),
            eta_s,
        })
    }
}

/// Each running job's fair share of worker time: weight × cost per query, normalised over
/// `jobs` (the running jobs, with the cost of each one's model in ms per query).
pub fn fair_shares(jobs: &[(u64, u32, f64)]) -> HashMap<u64, f64> {
    let total: f64 = jobs
        .iter()
        .map(|(_, w, c)| f64::from(*w) * c.max(0.0))
        .sum();
    jobs.iter()
        .map(|(id, w, c)| {
            let share = if total > 0.0 {
                f64::from(*w) * c.max(0.0) / total
            } else {
                0.0
            };
            (*id, share)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_gives_exact_moments_and_close_percentiles() {
        let mut s = Summary::default();
        for v in 1..=100 {
            s.add(f64::from(v), 1);
        }
        s.add(1000.0, 0);
        s.add(f64::NAN, 3);
        let d = s.to_api();
        assert_eq!(d.count, 100);
        assert!((d.mean - 50.5).abs() < 1e-9);
        assert!((d.std - 28.866).abs() < 1e-3, "{}", d.std);
        for (got, want) in [(d.p50, 50.0), (d.p90, 90.0), (d.p95, 95.0), (d.p99, 99.0)] {
            assert!((got - want).abs() <= want * 0.02 + 1.0, "{got} vs {want}");
        }
        assert_eq!(Summary::default().to_api(), Distribution::default());
    }

    #[test]
    fn windows_count_completions_and_the_busy_part_of_each_batch() {
        let mut j = JobStatsIndex::default();
        j.leased("w1");
        j.lease_ended("w1");
        j.completed("w1", 8, 1_000, 2_000, 500);
        j.completed("w2", 4, 10_000, 12_000, 2_000);
        assert_eq!(j.completed_between(2_000, 12_000), 4);
        assert_eq!(j.completed_between(1_999, 11_999), 8);
        // (2_000, 12_000]: batch 1 busy 1_500..2_000 is outside; batch 2 all inside.
        assert_eq!(j.busy_between(2_000, 12_000), 2_000);
        assert_eq!(j.busy_between(1_000, 11_000), 500 + 1_000);
        let ws = j.workers_api(|id| format!("n-{id}"));
        assert_eq!(ws.len(), 2);
        assert_eq!((ws[0].queries_done, ws[0].current), (8, false));
        assert_eq!(ws[1].name, "n-w2");
        // Latency 1 000 ms for 8 queries and 2 000 ms for 4.
        let l = j.latency.to_api();
        assert_eq!(l.count, 12);
        assert!((l.mean - (1_000.0 * 8.0 + 2_000.0 * 4.0) / 12.0).abs() < 1e-6);
        // Old completions leave the window.
        j.completed("w1", 1, 0, 100_000, 1);
        assert_eq!(j.recent.len(), 1);
    }

    #[test]
    fn a_cost_window_averages_the_last_batches() {
        let mut w = CostWindow::default();
        assert_eq!(w.ms_per_query(), None);
        for _ in 0..COST_WINDOW {
            w.add(800, 8);
        }
        assert_eq!(w.ms_per_query(), Some(100.0));
        for _ in 0..COST_WINDOW {
            w.add(80, 8);
        }
        assert_eq!(w.ms_per_query(), Some(10.0));
        assert!(seed_cost_ms(Arch::ResNet152, None) > seed_cost_ms(Arch::EfficientNetLite0, None));
        assert_eq!(seed_cost_ms(Arch::Synthetic, Some(25)), 25.0);
    }

    #[test]
    fn shares_follow_weight_times_cost() {
        let s = fair_shares(&[(1, 1, 40.0), (2, 1, 10.0), (3, 2, 5.0)]);
        assert!((s[&1] - 40.0 / 60.0).abs() < 1e-12);
        assert!((s[&3] - 10.0 / 60.0).abs() < 1e-12);
        assert!(fair_shares(&[(1, 1, 0.0)])[&1] == 0.0);
    }
}
