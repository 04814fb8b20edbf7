//! The HTTP client every IDunno process uses to talk to the coordinators.
//!
//! It holds the list of all coordinators, sticks to the last one that answered, and moves on
//! to the next on a connection error or while the cluster has no leader (503). Every write
//! carries one request id for all of its attempts, so a retry after a lost answer is applied
//! once. It is not a load balancer and holds no cluster state beyond "who answered last".

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::transport::{Scheme, Transport};
use crate::{ErrorBody, REQUEST_ID_HEADER, SECRET_HEADER};

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered with an error (4xx, or a 5xx that retrying did not cure).
    #[error("{} ({status})", body.error)]
    Api { status: u16, body: ErrorBody },
    /// No coordinator could be reached, or none had a leader, before the deadline.
    #[error("no coordinator answered ({tried}): {last}")]
    Unavailable { tried: String, last: String },
    /// A request could not be built or a response could not be read.
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for the coordinators' REST API; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The scheme of the transport the client was made with, for the addresses the cluster
    /// hands out bare (storage nodes).
    scheme: Scheme,
    /// Base URLs (`http://host:port`), in the order given.
    coordinators: Vec<String>,
    /// Index of the coordinator that answered last; tried first.
    current: AtomicUsize,
    token: Option<String>,
    /// The cluster secret, sent with every call when set (membership changes need it).
    secret: Option<String>,
    /// How long one logical call may keep retrying through elections and dead nodes.
    deadline: Duration,
    /// Per-attempt timeout (a long-poll adds its own wait to it).
    attempt_timeout: Duration,
}

impl Client {
    /// A client for these coordinator addresses (`host:port`, `http://…` or `https://…`)
    /// over plain HTTP (an `https://` address is verified against the system's roots).
    pub fn new(coordinators: &[String], token: Option<String>) -> Result<Client, ClientError> {
        Client::with_transport(coordinators, token, &Transport::plain())
    }

    /// A client for these coordinator addresses over `transport` (bare `host:port`s get its
    /// scheme; TLS trusts its roots).
    pub fn with_transport(
        coordinators: &[String],
        token: Option<String>,
        transport: &Transport,
    ) -> Result<Client, ClientError> {
        let scheme = transport.scheme();
        let coordinators: Vec<String> = coordinators
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(|c| scheme.base_url(c))
            .collect();
        if coordinators.is_empty() {
            return Err(ClientError::Protocol(
                "no coordinator address given (use --coordinators or IDUNNO_COORDINATORS)".into(),
            ));
        }
        let http = transport
            .client_builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                scheme,
                coordinators,
                current: AtomicUsize::new(0),
                token,
                secret: None,
                deadline: Duration::from_secs(15),
                attempt_timeout: Duration::from_secs(10),
            }),
        })
    }

    /// The same client with another retry deadline for a whole call.
    pub fn with_deadline(&self, deadline: Duration) -> Client {
        Client {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                scheme: self.inner.scheme,
                coordinators: self.inner.coordinators.clone(),
                current: AtomicUsize::new(self.inner.current.load(Ordering::Relaxed)),
                token: self.inner.token.clone(),
                secret: self.inner.secret.clone(),
                deadline,
                attempt_timeout: self.inner.attempt_timeout,
            }),
        }
    }

    /// The same client sending the cluster secret with every call (for administration:
    /// membership changes).
    pub fn with_secret(&self, secret: Option<String>) -> Client {
        Client {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                scheme: self.inner.scheme,
                coordinators: self.inner.coordinators.clone(),
                current: AtomicUsize::new(self.inner.current.load(Ordering::Relaxed)),
                token: self.inner.token.clone(),
                secret,
                deadline: self.inner.deadline,
                attempt_timeout: self.inner.attempt_timeout,
            }),
        }
    }

    /// The underlying reqwest client (shared connection pool), for streaming calls.
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The scheme bare `host:port` addresses from the cluster are reached with.
    pub fn scheme(&self) -> Scheme {
        self.inner.scheme
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }

    /// Coordinator base URLs, the one that answered last first.
    pub fn coordinators(&self) -> Vec<String> {
        let n = self.inner.coordinators.len();
        let start = self.inner.current.load(Ordering::Relaxed) % n;
        (0..n)
            .map(|i| self.inner.coordinators[(start + i) % n].clone())
            .collect()
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::GET, path, None::<&()>, None).await?;
        decode(&body.1)
    }

    /// `POST path` with a JSON body, decoded.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = self.call(Method::POST, path, Some(body), None).await?;
        decode(&body.1)
    }

    /// `PATCH path` with a JSON body, decoded.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = self.call(Method::PATCH, path, Some(body), None).await?;
        decode(&body.1)
    }

    /// `DELETE path`; the body is ignored.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, path, None::<&()>, None).await?;
        Ok(())
    }

    /// One logical call: retried on other coordinators until it gets a definite answer.
    /// Returns the status and the raw body of a 2xx answer. `long_poll` extends the
    /// per-attempt timeout for calls that wait on the server.
    pub async fn call<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        long_poll: Option<Duration>,
    ) -> Result<(StatusCode, bytes::Bytes), ClientError> {
        let payload = match body {
            Some(b) => {
                Some(serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))?)
            }
            None => None,
        };
        let timeout = self.inner.attempt_timeout + long_poll.unwrap_or_default();
        let resp = self
            .send(method, path, |req| {
                let req = req.timeout(timeout);
                match &payload {
                    Some(p) => req
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(p.clone()),
                    None => req,
                }
            })
            .await?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(format!("answer broke off: {e}")))?;
        Ok((status, bytes))
    }

    /// The retry loop under every call: sends the request `build` makes (afresh for each
    /// attempt, so a streamed body is reopened) to the coordinators in turn, with one request
    /// id, until one gives a definite answer. Returns a 2xx response with its body unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let request_id = (method != Method::GET).then(new_request_id);
        let started = Instant::now();
        let n = self.inner.coordinators.len();
        let mut last_error: String;
        let mut attempt: u32 = 0;
        // Coordinators in a row that refused this process's TLS (an unknown CA, a name the
        // certificate does not hold): waiting does not cure that.
        let mut tls_refusals: usize = 0;
        loop {
            let index = self.inner.current.load(Ordering::Relaxed) % n;
            let url = format!("{}{}", self.inner.coordinators[index], path);
            let mut req = self
                .inner
                .http
                .request(method.clone(), &url)
                .timeout(self.inner.attempt_timeout);
            if let Some(id) = &request_id {
                req = req.header(REQUEST_ID_HEADER, id);
            }
            if let Some(token) = &self.inner.token {
                req = req.bearer_auth(token);
            }
            if let Some(secret) = &self.inner.secret {
                req = req.header(SECRET_HEADER, secret);
            }
            match build(req).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    if !retryable(status) {
                        return Err(ClientError::Api {
                            status: status.as_u16(),
                            body: error_body(status, &bytes),
                        });
                    }
                    last_error = format!("{url}: {}", describe(status, &bytes));
                }
                Err(e) => {
                    last_error = format!("{url}: {}", describe_error(&e));
                    if tls_error(&e).is_some() {
                        tls_refusals += 1;
                        if tls_refusals >= n {
                            return Err(ClientError::Unavailable {
                                tried: self.inner.coordinators.join(","),
                                last: last_error,
                            });
                        }
                    } else {
                        tls_refusals = 0;
                    }
                }
            }
            // Move on to the next coordinator; back off a little once all were tried.
            self.inner.current.store((index + 1) % n, Ordering::Relaxed);
            attempt += 1;
            if started.elapsed() >= self.inner.deadline {
                return Err(ClientError::Unavailable {
                    tried: self.inner.coordinators.join(","),
                    last: last_error,
                });
            }
            if (attempt as usize).is_multiple_of(n) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Uploads a local file as the next version of SDFS `name` (streamed; a retry reopens it).
    pub async fn upload_file(
        &self,
        name: &str,
        local: &std::path::Path,
        replicas: Option<u32>,
    ) -> Result<crate::file::FileVersion, ClientError> {
        let io = |e: std::io::Error| ClientError::Protocol(format!("{}: {e}", local.display()));
        let file = std::fs::File::open(local).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut path = format!("/v1/files/{}", encode_path(name));
        if let Some(r) = replicas {
            path.push_str(&format!("?replicas={r}"));
        }
        // Each attempt reads the file from the start through its own handle.
        let body = || -> std::io::Result<reqwest::Body> {
            use std::io::{Seek, SeekFrom};
            let mut f = file.try_clone()?;
            f.seek(SeekFrom::Start(0))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(f),
                256 << 10,
            );
            Ok(reqwest::Body::wrap_stream(stream))
        };
        let resp = self
            .send(Method::PUT, &path, |req| {
                let req = req
                    .timeout(Duration::from_secs(24 * 3600))
                    .header(reqwest::header::CONTENT_LENGTH, len);
                match body() {
                    Ok(b) => req.body(b),
                    // An unreadable body fails this attempt instead of sending wrong bytes.
                    Err(e) => req.body(reqwest::Body::wrap_stream(futures::stream::once(
                        async move { Err::<bytes::Bytes, _>(e) },
                    ))),
                }
            })
            .await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Protocol(format!("bad answer: {e}")))
    }

    /// Starts reading SDFS `name` (a version, or the newest); the body streams from the answer.
    pub async fn download(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut path = format!("/v1/files/{}", encode_path(name));
        if let Some(v) = version {
            path.push_str(&format!("?version={v}"));
        }
        self.send(Method::GET, &path, |req| {
            req.timeout(Duration::from_secs(24 * 3600))
        })
        .await
    }
}

pub use crate::encoding::encode_path;

/// Statuses that mean "ask again, maybe elsewhere": no leader yet, leader changing,
/// overloaded, or a coordinator that is no longer a member of the group (421).
fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::MISDIRECTED_REQUEST
    )
}

fn error_body(status: StatusCode, bytes: &[u8]) -> ErrorBody {
    serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
        error: if bytes.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_string()
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        },
        code: "http".into(),
        leader: None,
    })
}

fn describe(status: StatusCode, bytes: &[u8]) -> String {
    format!("{} ({status})", error_body(status, bytes).error)
}

/// The TLS failure (rustls's error) behind a reqwest error, if that is what it is.
pub fn tls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An I/O error hides the error it wraps from `source`: look inside.
        if let Some(tls) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|wrapped| wrapped.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        source = inner.source();
    }
    None
}

/// A reqwest error in a few words, without its URL (the caller names the peer), with the
/// causes a plain `to_string` leaves out.
pub fn describe_error(e: &reqwest::Error) -> String {
    if let Some(tls) = tls_error(e) {
        return format!("TLS: {tls}");
    }
    if e.is_connect() {
        return "connection refused or unreachable".into();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(&format!(" ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s = format!("{s}: {inner}");
        source = inner.source();
    }
    s
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol(format!("bad answer: {e}")))
}

/// A fresh request id: unique per process and call, unpredictable enough to not collide
/// across processes (time, pid, a counter and the std library's random hasher keys).
pub fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}{:08x}", h.finish(), nanos as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded_but_keep_slashes() {
        assert_eq!(encode_path("images/a b#1.png"), "images/a%20b%231.png");
        assert_eq!(encode_path("é"), "%C3%A9");
    }

    #[test]
    fn request_ids_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }

    #[test]
    fn an_empty_coordinator_list_is_refused() {
        assert!(Client::new(&[" ".to_string()], None).is_err());
    }
}
