//! TLS for every IDunno listener and the clients beside it: the `--tls-*` options every role
//! takes, loading them into a rustls server configuration and an [`idunno_api::Transport`]
//! that trusts the cluster's CA, and [`serve`], which runs an axum router on a TCP listener
//! over plain HTTP or TLS.
//!
//! TLS handshakes run in their own tasks (bounded in number and time), not in the accept
//! loop: a client that opens a connection and sends nothing cannot hold up the others.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::{Listener, ListenerExt};
use axum::Router;
use clap::Args;
use idunno_api::Transport;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// File names in a `--tls-dir` (as `idunno certs` writes them).
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const CA_FILE: &str = "ca.pem";

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// `--tls-dir`, `--tls-cert`, `--tls-key`, `--tls-ca`: none = plain HTTP.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsOptions {
    /// Folder holding `cert.pem`, `key.pem` and `ca.pem` (what `idunno certs` writes): serve
    /// TLS with that certificate and reach the rest of the cluster over TLS trusting that CA.
    /// `--tls-cert`, `--tls-key` and `--tls-ca` override its files one by one.
    #[arg(long, env = "IDUNNO_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,

    /// This node's certificate chain (PEM), leaf first.
    #[arg(long, env = "IDUNNO_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// This node's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "IDUNNO_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// The CA (PEM) other nodes' certificates are checked against; without it, the system's
    /// roots.
    #[arg(long, env = "IDUNNO_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Unusable `--tls-*` options or files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Options(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// What a role serves and reaches the cluster with.
#[derive(Clone, Default)]
pub struct Tls {
    /// The listener's TLS configuration; none = plain HTTP.
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// How this role's clients reach the other nodes.
    pub transport: Transport,
}

impl Tls {
    /// Plain HTTP on the listener and to every node.
    pub fn plain() -> Tls {
        Tls::default()
    }
}

impl TlsOptions {
    /// Whether any TLS option is given.
    pub fn is_set(&self) -> bool {
        self.tls_dir.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_ca.is_some()
    }

    /// The options for the files `idunno certs` wrote into `dir`.
    pub fn from_dir(dir: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            tls_dir: Some(dir.into()),
            ..TlsOptions::default()
        }
    }

    /// Reads the certificate, key and CA: plain when no option is given. A node that serves
    /// TLS reaches the others over TLS too, so a CA alone (without a certificate and key) is
    /// refused, as is half a key pair.
    pub fn load(&self) -> Result<Tls, TlsError> {
        if !self.is_set() {
            return Ok(Tls::plain());
        }
        let in_dir = |name: &str| self.tls_dir.as_ref().map(|d| d.join(name));
        let cert = self.tls_cert.clone().or_else(|| in_dir(CERT_FILE));
        let key = self.tls_key.clone().or_else(|| in_dir(KEY_FILE));
        // A folder without a CA file means the system's roots; a named CA file must exist.
        let ca = self
            .tls_ca
            .clone()
            .or_else(|| in_dir(CA_FILE).filter(|p| p.exists()));
        let (cert, key) = match (cert, key) {
            (Some(c), Some(k)) => (c, k),
            (Some(_), None) => {
                return Err(TlsError::Options("--tls-cert needs --tls-key".into()));
            }
            (None, Some(_)) => {
                return Err(TlsError::Options("--tls-key needs --tls-cert".into()));
            }
            (None, None) => {
                return Err(TlsError::Options(
                    "--tls-ca needs --tls-cert and --tls-key (or --tls-dir): a node that \
                     reaches the cluster over TLS serves TLS too"
                        .into(),
                ));
            }
        };
        let server = server_config(&cert, &key)?;
        let transport = match &ca {
            Some(ca) => Transport::tls_trusting_file(ca).map_err(|e| TlsError::File {
                path: e.path,
                reason: e.reason,
            })?,
            None => Transport::tls_system_roots(),
        };
        Ok(Tls {
            server: Some(Arc::new(server)),
            transport,
        })
    }
}

/// The crypto provider everything in the process uses (the one reqwest's rustls uses).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls server configuration from PEM files: no client certificates asked (nodes prove
/// themselves with the cluster secret, users with the token), HTTP/2 and HTTP/1.1 offered.
fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let file_err = |path: &Path, reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no PEM certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Options(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| file_err(key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `app` on `listener` until `shutdown` resolves: plain HTTP, or TLS when `tls` is
/// given. Accepted connections have `TCP_NODELAY` (answers are small and latency counts).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    match tls {
        None => {
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            axum::serve(TlsListener::new(listener, config)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A TCP listener whose connections come out TLS-terminated.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`; handshakes run in tasks of their own.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The accept loop owns the socket: stopping it frees the port.
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop never ends while the listener lives; if it did, serve nothing
            // more rather than spin.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
