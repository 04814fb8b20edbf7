//! IDunno's SDFS storage node: a process that keeps immutable, content-addressed blobs (named
//! by their BLAKE3) in sled and serves them to coordinators and workers over HTTP. The file
//! *namespace* — names, versions, which node holds which blob — is not here: it lives in the
//! coordinators' Raft state, and the coordinators drive uploads, deletions and repairs.
//!
//! Layers, bottom up: [`chunk`], [`meta`] and [`content`] (what is on disk), [`blob_store`]
//! with [`upload`] and [`blob_read`] (the store; blocking), [`transfer`] (async streaming in
//! and out of the store), [`routes`] and [`fetch`] (HTTP), [`heartbeat`] (registration with
//! the coordinators), [`node`] (one running node).

pub mod auth;
pub mod blob_read;
pub mod blob_store;
pub mod chunk;
pub mod config;
pub mod content;
pub mod error;
pub mod fetch;
pub mod hash;
pub mod heartbeat;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod routes;
mod sled_lock;
pub mod transfer;
pub mod upload;

pub use blob_read::BlobRead;
/// Test hooks (simulated bit rot), for the tests of this and other crates: behind the
/// `test-util` feature, never in a release build of the binary.
#[cfg(any(test, feature = "test-util"))]
pub use blob_store::{corrupt_byte_for_tests, forge_byte_for_tests};
pub use blob_store::{BlobStore, Deleted, StoreOptions, Totals};
pub use config::NodeConfig;
pub use error::SdfsError;
pub use hash::BlobHash;
pub use idunno_api::range::ByteRange;
pub use node::{run, start, NodeHandle};
pub use upload::{SealedUpload, Upload};

pub use idunno_api::headers::{EXPECT_HASH_HEADER, HASH_HEADER, SECRET_HEADER, STAMP_HEADER};
