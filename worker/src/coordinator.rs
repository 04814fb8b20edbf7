//! Worker calls to the coordinators that must keep one request id until they get an answer.
//!
//! [`idunno_api::Client::call`] keeps its request id across the retries of one call, but a
//! call that gives up (every coordinator down for longer than its deadline) and is made again
//! gets a new id. For a lease that is wrong: the first attempt may have been granted and its
//! answer lost, and a new id would lease a second batch while the first one sits, held by a
//! live worker, until its hard deadline. [`call_until_answered`] therefore keeps one id until
//! a coordinator gives a definite answer (any 2xx or 4xx), however long the outage lasts (or
//! until the caller's deadline). A 5xx is no definite answer: the coordinator may have lost
//! its leader mid-write, or failed on its side, and another one (or the same one a moment
//! later) may well succeed, so it is retried like an unreachable coordinator, with backoff.
//! Everything else uses the `Client` directly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use idunno_api::{Client, ClientError, ErrorBody, REQUEST_ID_HEADER};
use reqwest::{Method, StatusCode};
use serde::Serialize;

/// Pause after the first round in which every coordinator was tried without a definite
/// answer; it doubles each round up to [`MAX_ROUND_PAUSE`].
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// Longest pause between rounds (a coordinator that keeps failing is not hammered).
const MAX_ROUND_PAUSE: Duration = Duration::from_secs(2);

/// Per-attempt timeout on top of a long poll's own wait.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// `method path` with a JSON `body` and the fixed `request_id`, tried on every coordinator in
/// turn (the one that answered last first) until one answers 2xx (returned) or 4xx
/// (an [`ClientError::Api`] error), or `give_up_after` passes (then the last 5xx answer, if
/// the last round ended on one, else [`ClientError::Unavailable`]). Unreachable coordinators,
/// timeouts and 5xx answers are retried, with a pause between rounds that grows from
/// [`ROUND_PAUSE`] to [`MAX_ROUND_PAUSE`] but never past the deadline. `long_poll` extends the
/// per-attempt timeout by the server-side wait.
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
    let mut round: u32 = 0;
    loop {
        let mut last = String::new();
        let mut last_answer: Option<ClientError> = None;
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
                        Ok(bytes) => {
                            last = format!("{base}: answered {status}");
                            last_answer = Some(ClientError::Api {
                                status: status.as_u16(),
                                body: error_body(status, &bytes),
                            });
                            continue;
                        }
                        Err(e) => last = format!("{base}: {e}"),
                    }
                }
                Err(e) if e.is_timeout() => last = format!("{base}: timed out"),
                Err(e) if e.is_connect() => last = format!("{base}: unreachable"),
                Err(e) => last = format!("{base}: {e}"),
            }
            last_answer = None;
        }
        let pause = round_pause(round);
        round = round.saturating_add(1);
        if let Some(deadline) = give_up_after {
            let elapsed = started.elapsed();
            if elapsed >= deadline {
                return Err(last_answer.unwrap_or_else(|| ClientError::Unavailable {
                    tried: client.coordinators().join(","),
                    last,
                }));
            }
            // One more round right at the deadline rather than a pause that overshoots it.
            tokio::time::sleep(pause.min(deadline - elapsed)).await;
        } else {
            tokio::time::sleep(pause).await;
        }
        tracing::debug!(%path, %last, "no coordinator answered definitely; retrying with the same request id");
    }
}

/// Not a definite answer: no leader now, leader changing, the coordinator failed on its
/// side (any 5xx), or it is no longer a member of the group (421). Ask again, maybe
/// elsewhere; the request id makes a repeat harmless.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::MISDIRECTED_REQUEST
}

/// The pause after round `round` (0-based) of unanswered attempts: doubling, capped.
fn round_pause(round: u32) -> Duration {
    ROUND_PAUSE
        .saturating_mul(1u32 << round.min(16))
        .min(MAX_ROUND_PAUSE)
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

pub use idunno_api::encoding::encode_segment;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_retried_and_client_errors_are_answers() {
        for code in [500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        assert!(retryable(StatusCode::MISDIRECTED_REQUEST));
        for code in [400, 404, 409, 422] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn the_pause_between_rounds_backs_off_to_a_cap() {
        assert_eq!(round_pause(0), ROUND_PAUSE);
        assert_eq!(round_pause(1), ROUND_PAUSE * 2);
        assert!(round_pause(2) > round_pause(1));
        assert_eq!(round_pause(30), MAX_ROUND_PAUSE);
        assert_eq!(round_pause(u32::MAX), MAX_ROUND_PAUSE);
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
