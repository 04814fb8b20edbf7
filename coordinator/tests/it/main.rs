//! The coordinator's integration tests, in one test binary: groups started in-process on
//! port 0 (`cluster`), and openraft's storage suite against our sled store (`store_suite`).

mod cluster;
mod contract;
mod store_suite;
