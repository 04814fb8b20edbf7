//! IDunno worker: pulls batches from the coordinators and runs `idunno-models` networks on
//! them.
//!
//! The worker role is [`run`] (a process, until SIGTERM) or [`start`] (in-process, with a
//! [`WorkerHandle`]), configured by one [`WorkerConfig`]. Layout, one module per concept:
//!
//! * start-up and shutdown: `runtime` ([`start`], [`run`]) builds the `shared` context (what
//!   every task holds) and spawns the tasks; `stop` is the stop signal;
//! * the tasks: `heartbeat` (every coordinator, model loads), `prefetch` (the lease call and
//!   input preparation), [`compute`] (forward passes), [`results`] (written to SDFS, reported),
//!   `online` (online batches: decoded, run ahead of jobs' batches, outputs to the leader);
//! * its own HTTP listener: `listener` (`/healthz`, `/readyz`, `/metrics`), `metrics`;
//! * what the tasks use: `queue` (prepared batches, held leases), [`pool`] (compute threads),
//!   `release` (giving a lease back), [`inputs`] (reading from storage nodes), [`model_cache`],
//!   [`sdfs`] (weights in, results out), `coordinator` (calls kept under one request id),
//!   [`config`], [`error`].
//!
//! No two of these import each other in a ring: `runtime` is the only module that knows them
//! all. The networks themselves live in
//! the `idunno-models` crate, which knows nothing of the cluster. A worker holds no state a
//! restart needs.

pub(crate) mod compute;
pub mod config;
mod coordinator;
pub mod error;
mod heartbeat;
pub mod inputs;
pub(crate) mod lanes;
mod listener;
mod metrics;
pub mod model_cache;
mod online;
pub mod pool;
mod prefetch;
mod queue;
mod release;
pub(crate) mod results;
mod runtime;
pub(crate) mod sdfs;
mod shared;
mod standalone;
mod stop;

pub use config::{ModelSelection, WorkerConfig};
pub use error::WorkerError;
pub use runtime::{run, start, WorkerHandle, WorkerStats};
pub use standalone::{standalone_throughput, EncodedImage};
