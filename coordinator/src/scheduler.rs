//! Fair-time scheduling: which job the next free worker serves.
//!
//! A job's rate is the queries it completed in the last [`WINDOW`]. The next lease goes to
//! the runnable job furthest behind its fair share: the lowest (recent completions + queries in
//! flight) per unit of weight. A job whose model is 3× slower thus ends up with about 3× the
//! worker time, and a new job (rate 0) is served by the very next free worker. Soft state of the
//! leader, rebuilt from completions after a failover.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::state::jobs::JobRecord;

/// The rate window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Recent completions per job.
#[derive(Debug, Default)]
pub struct FairShare {
    completions: HashMap<u64, VecDeque<(Instant, u64)>>,
    /// When this leader started counting: rates are over min(WINDOW, time since).
    since: Option<Instant>,
}

impl FairShare {
    pub fn new(now: Instant) -> FairShare {
        FairShare {
            completions: HashMap::new(),
            since: Some(now),
        }
    }

    /// Counts `queries` completed for `job` at `now`.
    pub fn record(&mut self, job: u64, queries: u64, now: Instant) {
        let window = self.completions.entry(job).or_default();
        window.push_back((now, queries));
        prune(window, now);
    }

    /// Queries completed by `job` within the window.
    pub fn recent(&mut self, job: u64, now: Instant) -> u64 {
        match self.completions.get_mut(&job) {
            Some(window) => {
                prune(window, now);
                window.iter().map(|(_, q)| q).sum()
            }
            None => 0,
        }
    }

    /// Completed queries per second over the window.
    pub fn rate(&mut self, job: u64, now: Instant) -> f64 {
        let span = self
            .since
            .map(|s| now.saturating_duration_since(s).min(WINDOW))
            .unwrap_or(WINDOW)
            .as_secs_f64()
            .max(1.0);
        self.recent(job, now) as f64 / span
    }

    /// The job to serve next among `runnable`, or `None` if there is none.
    pub fn pick<'a>(
        &mut self,
        runnable: impl Iterator<Item = &'a JobRecord>,
        now: Instant,
    ) -> Option<u64> {
        let mut best: Option<(f64, u64)> = None;
        for job in runnable {
            let served =
                (self.recent(job.id, now) + job.in_flight) as f64 / f64::from(job.weight.max(1));
            if best.is_none_or(|(score, _)| served < score) {
                best = Some((served, job.id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Forgets jobs that no longer exist.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.completions.retain(|job, _| keep(*job));
    }
}

fn prune(window: &mut VecDeque<(Instant, u64)>, now: Instant) {
    while let Some((t, _)) = window.front() {
        if now.saturating_duration_since(*t) > WINDOW {
            window.pop_front();
        } else {
            break;
        }
    }
}
