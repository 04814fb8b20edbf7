//! The worker's compute pool: its own rayon threads, entered from a blocking thread so the
//! async threads stay free for heartbeats and lease calls while a forward pass runs.

use std::sync::Arc;

use crate::error::WorkerError;

/// The worker's compute threads.
#[derive(Clone)]
pub struct ComputePool {
    pool: Arc<rayon::ThreadPool>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_runs_work_and_reports_panics() {
        let pool = ComputePool::new(2).unwrap();
        assert_eq!(pool.threads(), 2);
        assert_eq!(pool.run(rayon::current_num_threads).await.unwrap(), 2);
        let err = pool.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(matches!(err, WorkerError::Task(_)));
    }
}
