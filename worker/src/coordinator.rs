//! Worker calls to the coordinators that must keep one request id until they get an answer.
//!
//! [`idunno_api::Client::call`] keeps its request id across the retries of one call, but a
//! call that gives up (every coordinator down for longer than its deadline) and is made again
//! gets a new id. For a lease that is wrong: the first attempt may have been granted and its
//! answer lost, and a new id would lease a second batch while the first one sits, held by a
//! live worker, until its hard deadline. [`call_until_answered`] therefore keeps one id until
//! a coordinator gives a definite answer (any 2xx or 4xx), however long the outage lasts.
//! Everything else uses the `Client` directly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use idunno_api::{Client, ClientError, ErrorBody, REQUEST_ID_HEADER};
use reqwest::{Method, StatusCode};
use serde::Serialize;

/// Pause after every coordinator was tried once without a definite answer.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// Per-attempt timeout on top of a long poll's own wait.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// `method path` with a JSON `body` and the fixed `request_id`, tried on every coordinator in
/// turn (the one that answered last first) until one answers 2xx (returned) or 4xx/500
/// (an [`ClientError::Api`] error), or `give_up_after` passes. Unreachable coordinators and
/// 502/503/504 answers (no leader yet) are retried. `long_poll` extends the per-attempt
/// timeout by the server-side wait.
pub async fn call_until_answered<B: Serialize>(
    client: &Client,
    method: Method,
    path: &str,
    body: &B,
    request_id: &str,
    long_poll: Option<Duration>,
    give_up_after: Option<Duration>,
) -> Result<(StatusCode, Bytes), ClientError> {
    let payload = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let started = Instant::now();
    let timeout = ATTEMPT_TIMEOUT + long_poll.unwrap_or_default();
    loop {
        let mut last = String::new();
        for base in client.coordinators() {
            let mut request = client
                .http()
                .request(method.clone(), format!("{base}{path}"))
                .timeout(timeout)
                .header(REQUEST_ID_HEADER, request_id)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload.clone());
            if let Some(token) = client.token() {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(bytes) if status.is_success() => return Ok((status, bytes)),
                        Ok(bytes) if !retryable(status) => {
                            return Err(ClientError::Api {
                                status: status.as_u16(),
                                body: error_body(status, &bytes),
                            })
                        }
                        Ok(_) => last = format!("{base}: answered {status}"),
                        Err(e) => last = format!("{base}: {e}"),
                    }
                }
                Err(e) if e.is_timeout() => last = format!("{base}: timed out"),
                Err(e) if e.is_connect() => last = format!("{base}: unreachable"),
                Err(e) => last = format!("{base}: {e}"),
            }
        }
        if give_up_after.is_some_and(|d| started.elapsed() >= d) {
            return Err(ClientError::Unavailable {
                tried: client.coordinators().join(","),
                last,
            });
        }
        tracing::debug!(%path, %last, "no coordinator answered; retrying with the same request id");
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

/// No leader now, leader changing: ask again, maybe elsewhere.
fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
    )
}

fn error_body(status: StatusCode, bytes: &[u8]) -> ErrorBody {
    serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
        error: if bytes.is_empty() {
            status.to_string()
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        },
        code: "http".into(),
        leader: None,
    })
}

/// A path segment (a model name, a batch id) percent-encoded for a URL; `/` is encoded too.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("7-3"), "7-3");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_gives_up_after_the_deadline() {
        let client = Client::new(&["127.0.0.1:1".to_string()], None).unwrap();
        let started = Instant::now();
        let err = call_until_answered(
            &client,
            Method::POST,
            "/v1/x",
            &(),
            "id-1",
            None,
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ClientError::Unavailable { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
