//! IDunno worker: pulls batches from the coordinators and runs candle models on them.
//!
//! The worker role is [`run`] (a process, until SIGTERM) or [`start`] (in-process, with a
//! [`WorkerHandle`]), configured by one [`WorkerConfig`]. One module per concept:
//! [`config`], [`runtime`](start) (tasks and shutdown), `heartbeat`, `prefetch` (leases and
//! input preparation), [`compute`], [`inputs`] (reading from storage nodes), [`model_cache`],
//! [`sdfs`] (weights in, results out), [`results`], [`error`]. The networks themselves live in
//! [`models`], which knows nothing of the cluster. A worker holds no state a restart needs.

pub mod compute;
pub mod config;
mod coordinator;
pub mod error;
mod heartbeat;
pub mod inputs;
pub mod model_cache;
pub mod models;
mod prefetch;
mod queue;
pub mod results;
mod runtime;
pub mod sdfs;
mod standalone;

pub use config::{ModelSelection, WorkerConfig};
pub use error::WorkerError;
pub use runtime::{run, start, WorkerHandle, WorkerStats};
pub use standalone::{standalone_throughput, EncodedImage};
