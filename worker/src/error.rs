//! The one error type of the worker role (everything outside `models/`, which has its own
//! [`ModelError`]).
//!
//! Errors are sorted into *transient* (the cluster or the network may cure them: retry, or
//! give the lease back) and *permanent* (the same input fails the same way anywhere: report an
//! error result). Per-query failures (an unreadable or undecodable input) are not errors of
//! the worker at all: they become the query's `error` field.

use std::path::PathBuf;

use idunno_api::ClientError;

use idunno_models::ModelError;

/// What can go wrong in the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A configuration value that cannot work.
    #[error("invalid worker configuration: {0}")]
    Config(String),

    /// A call to the coordinators failed (unreachable, no leader, or an error answer).
    #[error("coordinator call {call}: {source}")]
    Coordinator {
        call: String,
        #[source]
        source: ClientError,
    },

    /// Reading an SDFS file through the coordinators failed mid-way (network, timeout).
    #[error("reading {name} from SDFS: {reason}")]
    Download { name: String, reason: String },

    /// What was read does not hash to what the cluster said it would.
    #[error("{what} should hash to {expected} but hashes to {actual}")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// One storage node could not serve an input blob.
    #[error("replica {replica}: {reason}")]
    Replica { replica: String, reason: String },

    /// An input of a batch could not be read from any of its replicas.
    #[error("input {name}: {reason}")]
    Input { name: String, reason: String },

    /// The lease names an architecture this worker does not know.
    #[error("model {model}: {reason}")]
    UnknownModel { model: String, reason: String },

    /// Loading or running a network failed.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// A local file operation (the weights cache) failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A CPU task (model load, forward pass) ended without a result (it panicked or was
    /// cancelled).
    #[error("compute task failed: {0}")]
    Task(String),

    /// The worker is stopping; the operation was abandoned.
    #[error("the worker is stopping")]
    Stopping,
}

impl WorkerError {
    /// Whether trying again later (or on another worker) may succeed.
    ///
    /// Transient: coordinators unreachable or answering 5xx, a download cut short, a local
    /// disk error, a corrupt transfer. Permanent: a 4xx answer (no such model or file, bad
    /// request), an unknown architecture, weights that do not fit the architecture.
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Coordinator { source, .. } => match source {
                ClientError::Api { status, .. } => *status >= 500,
                ClientError::Unavailable { .. } => true,
                ClientError::Protocol(_) => false,
            },
            WorkerError::Download { .. }
            | WorkerError::HashMismatch { .. }
            | WorkerError::Replica { .. }
            | WorkerError::Input { .. }
            | WorkerError::Io { .. }
            | WorkerError::Task(_)
            | WorkerError::Stopping => true,
            WorkerError::Config(_) | WorkerError::UnknownModel { .. } => false,
            WorkerError::Model(e) => matches!(e, ModelError::Io { .. }),
        }
    }

    /// Wraps a coordinator call's error with the call it came from.
    pub(crate) fn coordinator(call: impl Into<String>, source: ClientError) -> WorkerError {
        WorkerError::Coordinator {
            call: call.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_api::ErrorBody;

    fn api(status: u16) -> WorkerError {
        WorkerError::coordinator(
            "test",
            ClientError::Api {
                status,
                body: ErrorBody {
                    error: "x".into(),
                    code: "x".into(),
                    leader: None,
                },
            },
        )
    }

    #[test]
    fn transient_and_permanent_errors_are_told_apart() {
        assert!(api(503).is_transient());
        assert!(!api(404).is_transient());
        assert!(WorkerError::coordinator(
            "test",
            ClientError::Unavailable {
                tried: "a".into(),
                last: "b".into()
            }
        )
        .is_transient());
        assert!(!WorkerError::UnknownModel {
            model: "m".into(),
            reason: "r".into()
        }
        .is_transient());
        assert!(
            !WorkerError::Model(ModelError::UnknownArch(idunno_api::arch::UnknownArch(
                "vgg".into()
            )))
            .is_transient()
        );
    }
}
