//! IDunno's coordinator: a Raft group (openraft, log and state in sled) that holds all job
//! state, schedules batches onto workers and serves the REST API. The leader *is* the
//! coordinator; followers serve reads and forward writes, so any of them can take over with
//! no backup sync.
//!
//! Layers, bottom up: [`state`] (the deterministic state machine), [`raft`] (storage and
//! transport), [`proposer`] (group commit), [`node`] (one running coordinator), [`api`]
//! (HTTP). Leader-only soft state: [`workers`], [`scheduler`], [`lease`].

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod files;
pub mod forward;
pub mod lease;
pub mod local;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod proposer;
pub mod raft;
pub mod scheduler;
pub mod state;
pub mod workers;

pub use config::CoordinatorConfig;
pub use node::{start, Coordinator, CoordinatorHandle, StartError};
