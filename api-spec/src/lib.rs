//! IDunno's REST contract in Rust: the request and response bodies that the coordinator, the
//! workers, the storage nodes and the CLI exchange, and the HTTP [`client`] they all use.
//!
//! The human-readable contract is `api-spec/openapi.yaml`; every type here is named there.
//! This crate holds no server code.

pub mod address;
pub mod client;
pub mod cluster;
pub mod error;
pub mod file;
pub mod job;
pub mod model;
pub mod result;
pub mod worker;

pub use client::{Client, ClientError};
pub use error::ErrorBody;

/// HTTP header carrying a client-chosen id for a write, so that a retried write is applied once.
pub const REQUEST_ID_HEADER: &str = "idempotency-key";

/// HTTP header carrying the cluster secret between IDunno processes, and from administrators
/// (membership changes).
pub const SECRET_HEADER: &str = "x-idunno-secret";

/// Milliseconds since the Unix epoch, as stamped by the Raft leader.
pub type Millis = u64;
