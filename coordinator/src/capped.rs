//! Request bodies with a size limit that still let the client read the answer.
//!
//! A server that answers 413 mid-body and closes the connection leaves the client still
//! writing: it sees a broken pipe (or a reset) instead of the 413 and its reason. A
//! [`capped`] body yields the chunks up to the limit; past it, it reads on and discards
//! what the client still sends — at most [`LINGER_BYTES`] more, for at most
//! [`LINGER_TIME`] — and then yields [`TooLarge`], so the answer goes to a client that has
//! finished writing. A client that sends far more than the limit is cut off after that.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::{Stream, StreamExt};

/// Most bytes read and dropped past the limit before answering.
pub const LINGER_BYTES: u64 = 16 << 20;

/// Longest time spent reading past the limit before answering.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// Why a capped body ended early.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    /// The body grew past the limit (the rest was read and dropped, within the bounds).
    #[error("the body is over the limit of {0} bytes")]
    TooLarge(u64),
    /// The body broke off (the client went away, or sent a malformed body).
    #[error("the body broke off: {0}")]
    Broken(String),
}

/// The data of `body`, at most `limit` bytes of it; see the module's comment.
pub fn capped(body: Body, limit: u64) -> impl Stream<Item = Result<Bytes, CapError>> + Send {
    let frames = body.into_data_stream();
    futures::stream::unfold(Some((frames, 0u64)), move |state| async move {
        let (mut frames, sent) = state?;
        match frames.next().await? {
            Err(e) => Some((Err(CapError::Broken(e.to_string())), None)),
            Ok(chunk) if sent + chunk.len() as u64 > limit => {
                linger(&mut frames).await;
                Some((Err(CapError::TooLarge(limit)), None))
            }
            Ok(chunk) => {
                let sent = sent + chunk.len() as u64;
                Some((Ok(chunk), Some((frames, sent))))
            }
        }
    })
}

/// Reads and drops the rest of a body, within [`LINGER_BYTES`] and [`LINGER_TIME`].
async fn linger<S, E>(frames: &mut S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let drain = async {
        let mut dropped: u64 = 0;
        while let Some(Ok(chunk)) = frames.next().await {
            dropped += chunk.len() as u64;
            if dropped > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: usize, size: usize) -> Body {
        let stream = futures::stream::iter(
            (0..chunks).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![1u8; size]))),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_passes_whole() {
        let out: Vec<_> = capped(body(4, 10), 40).collect().await;
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|c| c.as_ref().is_ok_and(|c| c.len() == 10)));
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_read_to_its_end_then_refused() {
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = read.clone();
        let stream = futures::stream::iter(0..10).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 10]))
        });
        let out: Vec<_> = capped(Body::from_stream(stream), 35).collect().await;
        // Three chunks pass, then the refusal; and every chunk the client sent was read.
        assert_eq!(out.len(), 4);
        assert!(out[..3].iter().all(Result::is_ok));
        assert!(matches!(out[3], Err(CapError::TooLarge(35))));
        assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn lingering_stops_after_its_byte_bound() {
        let chunk = 1 << 20;
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = read.clone();
        // An endless body.
        let stream = futures::stream::repeat(()).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![0u8; chunk]))
        });
        let out: Vec<_> = capped(Body::from_stream(stream), 0).collect().await;
        assert!(matches!(out[..], [Err(CapError::TooLarge(0))]));
        let read = read.load(std::sync::atomic::Ordering::SeqCst) as u64;
        assert!(read * chunk as u64 > LINGER_BYTES && read <= LINGER_BYTES / chunk as u64 + 2);
    }
}
