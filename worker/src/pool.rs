//! The worker's compute pool: its own rayon threads, entered from a blocking thread so the
//! async threads stay free for heartbeats and lease calls while a forward pass runs.
//!
//! Work arrives two ways. A forward pass ([`ComputePool::run_pass`]) is the pool's main
//! work: its layers fork and join across every thread. Side work — decoding the next batch's
//! inputs, which arrive while a pass runs — goes through [`ComputePool::run_side`]. Given to
//! the pool as a job of its own, side work is taken up by whichever thread first waits at
//! one of the pass's joins, and the rest of the pass waits for it. When it splits into at
//! least as many pieces as there are threads (a batch's images), every thread takes pieces
//! and the pass pauses without leaving a core idle. When it cannot (one image to decode on
//! two threads), the other thread would sit idle for the whole decoding — about one image's
//! decoding of idle core per batch (`docs/BENCHMARKS.md`, workers). Such work is handed to
//! the pass's *server* instead: a task each pass runs beside itself (`rayon::join`) that
//! steals the pass's tasks when it has nothing else to do and runs side work when some
//! comes, so the decoding occupies one thread while the pass goes on on the others.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rayon::Yield;
use tokio::sync::oneshot;

use crate::error::WorkerError;

/// A side job, wrapped to send its own outcome.
type SideJob = Box<dyn FnOnce() + Send>;

/// The worker's compute threads.
#[derive(Clone)]
pub struct ComputePool {
    pool: Arc<rayon::ThreadPool>,
    side: Arc<Side>,
}

/// Side work waiting for a pass's server, and how many passes are serving now.
#[derive(Default)]
struct Side {
    state: Mutex<SideState>,
}

#[derive(Default)]
struct SideState {
    servers: usize,
    jobs: VecDeque<SideJob>,
}

impl Side {
    fn lock(&self) -> std::sync::MutexGuard<'_, SideState> {
        // A side job runs outside the lock, so a poisoned lock's state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` for a serving pass; gives it back if no pass is serving.
    fn offer(&self, job: SideJob) -> Result<(), SideJob> {
        let mut state = self.lock();
        if state.servers == 0 {
            return Err(job);
        }
        state.jobs.push_back(job);
        Ok(())
    }

    /// A pass's server, on a thread of `pool`: runs side jobs as they come and otherwise
    /// the pass's own tasks, until `done`. Finding neither, it yields its core to any other
    /// runnable thread and looks again; it does not sleep, since nothing would wake it for
    /// the pass's next tasks (a server that napped 100 µs at a time made batch 1 through the
    /// cluster 8–15 points costlier). Side jobs no server took by `done` go to the pool as
    /// jobs of their own, so the pass's result does not wait for them.
    fn serve(&self, done: &AtomicBool, pool: &rayon::ThreadPool) {
        while !done.load(Ordering::Acquire) {
            let job = self.lock().jobs.pop_front();
            if let Some(job) = job {
                job();
            } else if pool.yield_now() != Some(Yield::Executed) {
                std::thread::yield_now();
            }
        }
        let left = {
            let mut state = self.lock();
            state.servers -= 1;
            if state.servers == 0 {
                std::mem::take(&mut state.jobs)
            } else {
                VecDeque::new()
            }
        };
        for job in left {
            pool.spawn(job);
        }
    }
}

impl ComputePool {
    /// A pool of `threads` threads named `idunno-compute-N`.
    pub fn new(threads: usize) -> Result<ComputePool, WorkerError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("idunno-compute-{i}"))
            .build()
            .map_err(|e| WorkerError::Config(format!("cannot start compute threads: {e}")))?;
        Ok(ComputePool {
            pool: Arc::new(pool),
            side: Arc::default(),
        })
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `work` on the pool, from a blocking thread, and waits for it without blocking
    /// the async runtime. A panic in `work` becomes [`WorkerError::Task`].
    pub async fn run<R, F>(&self, work: F) -> Result<R, WorkerError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || pool.install(work))
            .await
            .map_err(|e| WorkerError::Task(e.to_string()))
    }

    /// Runs a forward pass like [`ComputePool::run`], with a server beside it that takes
    /// [`ComputePool::run_side`]'s side work while the pass runs (on a pool of one thread,
    /// the pass alone).
    pub async fn run_pass<R, F>(&self, pass: F) -> Result<R, WorkerError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if self.threads() < 2 {
            return self.run(pass).await;
        }
        let (pool, side) = (self.pool.clone(), self.side.clone());
        self.run(move || {
            side.lock().servers += 1;
            let done = AtomicBool::new(false);
            // The pass first: `join` runs it on this thread, and the server is the task
            // another thread steals (or this one runs after the pass, and ends at once).
            let (result, ()) = rayon::join(
                || {
                    let result = catch_unwind(AssertUnwindSafe(pass));
                    done.store(true, Ordering::Release);
                    result
                },
                || side.serve(&done, &pool),
            );
            result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
        .await
    }

    /// Runs side work (decoding inputs) that splits into `pieces` parallel pieces. Pieces
    /// too few to keep every thread busy (one image to decode on two threads) run beside a
    /// pass in progress, if there is one; else, and with more pieces, as a job of the
    /// pool's own ([`ComputePool::run`]): its pieces then keep every thread busy, so the
    /// pass it lands in pauses without leaving a core idle, and it is under way at once
    /// (a pass's server takes side work only between the tasks it steals, which can be
    /// long ones). A panic in `work` becomes [`WorkerError::Task`].
    pub async fn run_side<R, F>(&self, pieces: usize, work: F) -> Result<R, WorkerError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if pieces >= self.threads() {
            return self.run(work).await;
        }
        let (tx, rx) = oneshot::channel();
        let job: SideJob = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(work)));
        });
        if let Err(job) = self.side.offer(job) {
            self.run(job).await?;
        }
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(panic)) => Err(WorkerError::Task(panic_message(&panic))),
            Err(_) => Err(WorkerError::Task("side work dropped".into())),
        }
    }
}

/// What a caught panic said.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic");
    format!("the task panicked: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_pool_runs_work_and_reports_panics() {
        let pool = ComputePool::new(2).unwrap();
        assert_eq!(pool.threads(), 2);
        assert_eq!(pool.run(rayon::current_num_threads).await.unwrap(), 2);
        let err = pool.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(matches!(err, WorkerError::Task(_)));
        let err = pool
            .run_pass(|| -> u32 { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(err, WorkerError::Task(_)));
        let err = pool
            .run_side(1, || -> u32 { panic!("side boom") })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("side boom"), "{err}");
        // The pool still works after all three.
        assert_eq!(pool.run_pass(|| 7).await.unwrap(), 7);
    }

    /// Side work that arrives while a pass runs is done beside the pass, while the pass goes
    /// on. The side job here waits until the pass's work has ended: given to the pool as a
    /// job of its own, it would be run by a thread waiting at one of the pass's joins, and
    /// the pass could not end until the side job gave up waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn side_work_runs_beside_a_pass_without_holding_it_up() {
        for threads in [2, 3] {
            let pool = ComputePool::new(threads).unwrap();
            for _ in 0..20 {
                let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
                let (ended_tx, ended_rx) = std::sync::mpsc::channel::<()>();
                let pass = pool.run_pass(move || {
                    let _ = started_tx.send(());
                    // Forked work, with joins the side job could land in.
                    let sum: u64 = (0..20_000u64)
                        .into_par_iter()
                        .map(|i| (0..200u64).fold(i, |a, b| a.wrapping_mul(31).wrapping_add(b)))
                        .reduce(|| 0, u64::wrapping_add);
                    let _ = ended_tx.send(());
                    sum
                });
                let side = {
                    let pool = pool.clone();
                    tokio::task::spawn(async move {
                        tokio::task::spawn_blocking(move || started_rx.recv())
                            .await
                            .unwrap()
                            .unwrap();
                        pool.run_side(1, move || ended_rx.recv_timeout(Duration::from_secs(10)))
                            .await
                            .unwrap()
                    })
                };
                pass.await.unwrap();
                assert!(
                    side.await.unwrap().is_ok(),
                    "{threads} threads: the side work held the pass up"
                );
            }
        }
    }

    /// Side work offered when no pass runs, or just as one ends, still runs.
    #[tokio::test]
    async fn side_work_without_a_pass_runs_on_its_own() {
        let pool = ComputePool::new(2).unwrap();
        assert_eq!(pool.run_side(1, || 5).await.unwrap(), 5);
        assert_eq!(pool.run_side(8, || 6).await.unwrap(), 6);
        for i in 0..50u64 {
            let (a, b) = tokio::join!(pool.run_pass(move || i), pool.run_side(1, move || i + 1));
            assert_eq!((a.unwrap(), b.unwrap()), (i, i + 1));
        }
    }
}
