//! The `idunno` package's library half: what the binary and the system tests share — the
//! embedded cluster (every role in one process) that `idunno up` runs, and clusters of real
//! `idunno` processes for benchmarks and crash tests, and the throwaway certificate authority
//! of a TLS cluster.

pub mod certs;
pub mod embedded;
pub mod processes;
