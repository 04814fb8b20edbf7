//! The storage node's integration tests, in one test binary: the HTTP API (`http`), restarts
//! and registration against a coordinator stand-in (`node`), the blob store (`store`).
//! (`tests/memory.rs` stays a binary of its own: it measures the process's peak memory.)

mod common;
mod http;
mod node;
mod store;
