//! Lanes: how many batches the worker computes at once, and each one's share of the worker's
//! time.
//!
//! A pass over fewer images than there are compute threads leaves threads idle at its joins
//! (one image's layers split their work only so far): on 2 threads two batches of one at once
//! run 4–23 % more images/s than one at a time (`docs/BENCHMARKS.md`, workers, sixth pass).
//! So a compute slot may start a batch while the batches running hold fewer images than the
//! pool has threads (counted per pass: a job's batch may hold several passes of its batch
//! size, run one after the other), or fewer batches than the configured capacity: batches of
//! one run two at a time on two threads, batches as large as the pool one at a time (a second
//! would only hold more memory).
//!
//! Batches that run together share the threads, so a batch's wall time is not the worker time
//! it took. [`Lanes`] keeps a processor-sharing clock that advances at `1 / computing` of real
//! time (batches still loading their model hold a lane but do not compute); a batch's *share*
//! is how far the clock advanced while it computed. Shares add up to the time anything
//! computed, and are what the worker reports as a batch's compute time (the coordinator's
//! per-query cost and worker busy time are built from it).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::stop::stopped;

/// The admission rule and the share clock.
#[derive(Debug)]
pub(crate) struct Lanes {
    threads: usize,
    capacity: usize,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Batches in lanes, and their images (what admission counts).
    batches: usize,
    images: usize,
    /// Batches in lanes that are computing (what the share clock divides by).
    computing: usize,
    /// A slot holds the turn (it is waiting for the next batch).
    taking: bool,
    /// The share clock, in seconds, at `last`.
    clock: f64,
    last: Instant,
}

impl State {
    fn advance(&mut self, now: Instant) {
        if self.computing > 0 {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            self.clock += dt / self.computing as f64;
        }
        self.last = now;
    }

    fn admits(&self, threads: usize, capacity: usize) -> bool {
        !self.taking && (self.batches < capacity || self.images < threads)
    }
}

/// The right to take the next batch; given back (to the next slot) when dropped unstarted.
pub(crate) struct Turn<'a> {
    lanes: &'a Lanes,
    started: bool,
}

/// A batch in a lane; leaves it on [`Running::finish`] (or when dropped).
pub(crate) struct Running<'a> {
    lanes: &'a Lanes,
    images: usize,
    /// The share clock when the batch started computing ([`Running::compute`]).
    from: Option<f64>,
    done: bool,
}

impl Lanes {
    /// Lanes for a pool of `threads` with at least `capacity` batches at once.
    pub fn new(threads: usize, capacity: usize) -> Lanes {
        Lanes {
            threads: threads.max(1),
            capacity: capacity.max(1),
            state: Mutex::new(State {
                batches: 0,
                images: 0,
                computing: 0,
                taking: false,
                clock: 0.0,
                last: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    /// Most batches that may ever run at once (the compute slots the worker needs).
    pub fn slots(&self) -> usize {
        self.capacity.max(self.threads)
    }

    /// How many batches of `batch` images each run at once under the rule, in steady state.
    pub fn steady(threads: usize, capacity: usize, batch: usize) -> usize {
        let threads = threads.max(1);
        capacity.max(1).max(threads.div_ceil(batch.max(1)))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a batch may start; `None` once the worker stops.
    pub async fn turn(&self, stop: &mut watch::Receiver<bool>) -> Option<Turn<'_>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.admits(self.threads, self.capacity) {
                    state.taking = true;
                    return Some(Turn {
                        lanes: self,
                        started: false,
                    });
                }
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = stopped(stop) => return None,
            }
        }
    }
}

impl<'a> Turn<'a> {
    /// The batch taken runs passes of `images` images: it holds a lane now.
    pub fn start(mut self, images: usize) -> Running<'a> {
        self.started = true;
        let lanes = self.lanes;
        let mut state = lanes.lock();
        state.taking = false;
        state.batches += 1;
        state.images += images;
        drop(state);
        lanes.changed.notify_waiters();
        Running {
            lanes,
            images,
            from: None,
            done: false,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.started {
            self.lanes.lock().taking = false;
            self.lanes.changed.notify_waiters();
        }
    }
}

impl Running<'_> {
    /// The batch computes from now on (what came before, loading its model, is not compute
    /// time): its share counts, and it divides the others'.
    pub fn compute(&mut self) {
        if self.from.is_some() || self.done {
            return;
        }
        let mut state = self.lanes.lock();
        state.advance(Instant::now());
        state.computing += 1;
        self.from = Some(state.clock);
    }

    /// Leaves the lane; returns the batch's share of the worker's time since it started
    /// computing (zero if it never did).
    pub fn finish(mut self) -> Duration {
        self.leave()
    }

    fn leave(&mut self) -> Duration {
        if self.done {
            return Duration::ZERO;
        }
        self.done = true;
        let mut state = self.lanes.lock();
        state.advance(Instant::now());
        state.batches -= 1;
        state.images -= self.images;
        let share = match self.from {
            Some(from) => {
                state.computing -= 1;
                (state.clock - from).max(0.0)
            }
            None => 0.0,
        };
        drop(state);
        self.lanes.changed.notify_waiters();
        Duration::from_secs_f64(share)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_stopped() -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    /// Whether a turn is given at once.
    async fn admits_now(lanes: &Lanes) -> bool {
        let mut stop = never_stopped();
        tokio::time::timeout(Duration::from_millis(20), async {
            let _turn = lanes.turn(&mut stop).await;
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn small_batches_run_side_by_side_and_large_ones_alone() {
        let lanes = Lanes::new(2, 1);
        let mut stop = never_stopped();
        // Batches of one: two at once on two threads, not three.
        let a = lanes.turn(&mut stop).await.unwrap().start(1);
        let b = lanes.turn(&mut stop).await.unwrap().start(1);
        assert!(!admits_now(&lanes).await);
        drop(a);
        assert!(admits_now(&lanes).await);
        drop(b);
        // A batch as large as the pool runs alone.
        let big = lanes.turn(&mut stop).await.unwrap().start(2);
        assert!(!admits_now(&lanes).await);
        big.finish();
        assert!(admits_now(&lanes).await);
        // The configured capacity still allows that many of any size.
        let lanes = Lanes::new(2, 2);
        let _x = lanes.turn(&mut stop).await.unwrap().start(8);
        let _y = lanes.turn(&mut stop).await.unwrap().start(8);
        assert!(!admits_now(&lanes).await);
        assert_eq!(lanes.slots(), 2);
        assert_eq!(Lanes::new(4, 1).slots(), 4);
    }

    #[tokio::test]
    async fn one_slot_at_a_time_holds_the_turn() {
        let lanes = Lanes::new(4, 1);
        let mut stop = never_stopped();
        let turn = lanes.turn(&mut stop).await.unwrap();
        // Nothing runs, but a slot is taking: the next waits for it.
        assert!(!admits_now(&lanes).await);
        drop(turn);
        assert!(admits_now(&lanes).await);
    }

    #[tokio::test]
    async fn a_stopped_worker_gets_no_turn() {
        let lanes = Lanes::new(1, 1);
        let (tx, mut stop) = watch::channel(false);
        let _running = lanes.turn(&mut stop).await.unwrap().start(1);
        let waiting = lanes.turn(&mut stop);
        tx.send(true).unwrap();
        assert!(waiting.await.is_none());
    }

    #[test]
    fn steady_lanes_follow_the_rule() {
        // Admission by hand: start batches of `b` while images < threads (or < capacity).
        for threads in 1..=8 {
            for capacity in 1..=3 {
                for b in 1..=9 {
                    let (mut batches, mut images) = (0, 0);
                    while batches < capacity || images < threads {
                        batches += 1;
                        images += b;
                    }
                    assert_eq!(
                        Lanes::steady(threads, capacity, b),
                        batches,
                        "{threads} {capacity} {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn shares_split_the_time_between_batches_that_run_together() {
        let lanes = Lanes::new(2, 1);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut state = lanes.lock();
        state.last = t0;
        // A runs alone 0–100 ms, with B 100–300 ms, alone again 300–400 ms.
        state.advance(ms(0));
        state.computing = 1;
        let a_from = state.clock;
        state.advance(ms(100));
        state.computing = 2;
        let b_from = state.clock;
        state.advance(ms(300));
        state.computing = 1;
        let b_share = state.clock - b_from;
        state.advance(ms(400));
        let a_share = state.clock - a_from;
        assert!((a_share - 0.3).abs() < 1e-9, "{a_share}");
        assert!((b_share - 0.1).abs() < 1e-9, "{b_share}");
        // Together they account for the 400 ms something ran, once.
        assert!((a_share + b_share - 0.4).abs() < 1e-9);
    }

    #[tokio::test]
    async fn a_batch_loading_its_model_holds_a_lane_but_takes_no_share() {
        let lanes = Lanes::new(2, 1);
        let mut stop = never_stopped();
        let mut computing = lanes.turn(&mut stop).await.unwrap().start(1);
        let loading = lanes.turn(&mut stop).await.unwrap().start(1);
        // Two lanes are taken: nothing more starts.
        assert!(!admits_now(&lanes).await);
        computing.compute();
        std::thread::sleep(Duration::from_millis(30));
        // Alone computing, the batch's share is its wall time, not half of it.
        let share = computing.finish();
        assert!(share >= Duration::from_millis(30), "{share:?}");
        assert_eq!(loading.finish(), Duration::ZERO);
    }
}
