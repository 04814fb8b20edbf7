//! IDunno's wire protocol in Rust, in one place: the request and response bodies that the
//! coordinator, the workers, the storage nodes and the CLI exchange, and what travels beside
//! them.
//!
//! * bodies: [`job`], [`model`], [`worker`], [`file`], [`cluster`], [`result`], [`error`]
//!   (the error body and every error code), [`arch`] (the architectures' names), [`v2`] (the
//!   Open Inference Protocol's bodies and binary extension), [`online`] (online batches
//!   between coordinator and worker);
//! * what travels beside them: [`headers`], [`encoding`] (names in URL paths), [`range`]
//!   (the `Range` header), [`address`] (`host:port`);
//! * [`contract`] (feature `contract`, for tests): `openapi.yaml` as data, answers checked
//!   against it;
//! * clients (feature `client`, on by default): [`client`] (the coordinators, with retries
//!   and failover), [`storage_node`] (the storage nodes' internal routes) and [`transport`]
//!   (plain HTTP or TLS trusting the cluster's CA, for all of them).
//!
//! The human-readable contract is `api-spec/openapi.yaml`; every body here is named there.
//! This crate holds no server code. Without the `client` feature it is types only (the models
//! crate uses it so).

pub mod address;
pub mod arch;
#[cfg(feature = "client")]
pub mod client;
pub mod cluster;
#[cfg(feature = "contract")]
pub mod contract;
pub mod encoding;
pub mod error;
pub mod file;
pub mod headers;
pub mod job;
pub mod model;
pub mod online;
pub mod range;
pub mod result;
#[cfg(feature = "client")]
pub mod storage_node;
#[cfg(feature = "client")]
pub mod transport;
pub mod v2;
pub mod worker;

#[cfg(feature = "client")]
pub use client::{Client, ClientError};
pub use error::ErrorBody;
#[cfg(feature = "client")]
pub use transport::{Scheme, Transport};

pub use headers::{REQUEST_ID_HEADER, SECRET_HEADER};

/// Milliseconds since the Unix epoch, as stamped by the Raft leader.
pub type Millis = u64;
