//! The coordinator's side of SDFS: where a file's bytes go (placement), moving them to and
//! from storage nodes (upload, download), the leader's watch over the nodes (monitor) and
//! keeping every blob at its replication factor (repair). The namespace itself is replicated
//! state ([`crate::state::files`]); blobs live on storage nodes (the `sdfs` crate).

pub mod download;
pub mod monitor;
pub mod node_client;
pub mod placement;
pub mod repair;
pub mod upload;
