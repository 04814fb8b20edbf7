//! How a process reaches the cluster's HTTP endpoints: plain HTTP, or TLS that trusts the
//! cluster's certificate authority. A process holds one [`Transport`]; every client it builds
//! (coordinators, Raft peers, storage nodes) takes its scheme and its trust from it, so a
//! cluster is plain or TLS throughout, and a bare `host:port` (as nodes register and Raft
//! stores them) gets the right scheme wherever it is used.

use std::path::Path;

/// `http` or `https`, for addresses given as bare `host:port`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// `host:port` → `scheme://host:port`; an explicit `http://`/`https://` is kept as given;
    /// a trailing `/` is dropped.
    pub fn base_url(self, addr: &str) -> String {
        let addr = addr.trim_end_matches('/');
        if addr.starts_with("http://") || addr.starts_with("https://") {
            return addr.to_string();
        }
        format!("{}://{addr}", self.as_str())
    }
}

/// A bad `--tls-ca` file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TransportError {
    pub path: String,
    pub reason: String,
}

/// The scheme and the trusted roots of one process's clients.
#[derive(Clone, Default)]
pub struct Transport {
    scheme: Scheme,
    /// The certificates trusted instead of the system's roots; none = the system's.
    roots: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("scheme", &self.scheme)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Transport {
    /// Plain HTTP to bare addresses; an explicit `https://` address is verified against the
    /// system's roots.
    pub fn plain() -> Transport {
        Transport::default()
    }

    /// TLS to every address, trusting the system's roots.
    pub fn tls_system_roots() -> Transport {
        Transport {
            scheme: Scheme::Https,
            roots: Vec::new(),
        }
    }

    /// TLS to every address, trusting only the certificates of this PEM bundle (the
    /// cluster's CA).
    pub fn tls_trusting(ca_pem: &[u8]) -> Result<Transport, String> {
        let roots = reqwest::Certificate::from_pem_bundle(ca_pem).map_err(|e| e.to_string())?;
        if roots.is_empty() {
            return Err("no PEM certificate in it".into());
        }
        Ok(Transport {
            scheme: Scheme::Https,
            roots,
        })
    }

    /// [`Transport::tls_trusting`] the PEM file at `path`.
    pub fn tls_trusting_file(path: &Path) -> Result<Transport, TransportError> {
        let fail = |reason: String| TransportError {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        Transport::tls_trusting(&pem).map_err(fail)
    }

    /// Whether bare addresses are reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Https
    }

    /// The scheme bare addresses get.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// A reqwest client builder that trusts this transport's roots (only them, when it has
    /// any). Callers add their own timeouts.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder();
        if self.roots.is_empty() {
            builder
        } else {
            builder.tls_certs_only(self.roots.iter().cloned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_get_the_transports_scheme_and_explicit_ones_stay() {
        assert_eq!(
            Scheme::Http.base_url("127.0.0.1:7001"),
            "http://127.0.0.1:7001"
        );
        assert_eq!(
            Scheme::Https.base_url("127.0.0.1:7001/"),
            "https://127.0.0.1:7001"
        );
        assert_eq!(Scheme::Https.base_url("http://a:1/"), "http://a:1");
        assert_eq!(Scheme::Http.base_url("https://a:1"), "https://a:1");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("idunno-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = Transport::tls_trusting_file(&path).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let missing = Transport::tls_trusting_file(&dir.join("absent.pem")).unwrap_err();
        assert!(missing.to_string().contains("absent.pem"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
