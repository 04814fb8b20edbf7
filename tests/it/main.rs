//! The `idunno` package's system tests, in one test binary (one link, not eight): each module
//! is a user-visible area, `common` their shared helpers (clusters in a temp folder, raw HTTP,
//! polling with a deadline, the synthetic model).

mod cli;
mod common;
mod crash;
mod fairness;
mod jobs;
mod metrics;
mod netns;
mod online;
mod sdfs;
mod tls;
mod worker_reads;
