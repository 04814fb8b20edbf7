//! The read path of SDFS: any coordinator streams a version's bytes from one of its replicas,
//! verifying the content hash on the way. If a replica fails, breaks off or stalls (a dead
//! or hung node, a corrupt chunk the node refuses to send), the read resumes at the same
//! offset on the next replica, so the client sees one unbroken, correct stream. The last
//! piece of a whole-file read is held back until the content hash checks out: on a mismatch
//! the client gets a cut-off body, never a complete wrong one. Byte ranges are supported.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use super::StorageNodeClient;
use crate::error::ApiError;

/// What to read and from where.
pub struct ReadPlan {
    pub name: String,
    pub version: u64,
    pub hash: String,
    pub size: u64,
    /// Replica addresses, best first.
    pub replicas: Vec<String>,
}

pub use idunno_api::range::ByteRange;

/// Resolves an optional `Range` header against a file size (`Ok(None)`: the whole file):
/// malformed is a 400, outside the file a 416, as on the storage nodes.
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, ApiError> {
    let Some(header) = header else {
        return Ok(None);
    };
    ByteRange::parse_header(header, size)
        .map(Some)
        .map_err(|e| match e {
            idunno_api::range::RangeError::Malformed(m) => ApiError::BadRequest(m),
            e @ idunno_api::range::RangeError::Unsatisfiable { .. } => {
                ApiError::RangeNotSatisfiable(e.to_string())
            }
        })
}

/// The largest file [`read_all`] loads into a coordinator's memory (job results are far
/// smaller; anything bigger is refused rather than allocated).
pub const READ_ALL_LIMIT: u64 = 64 << 20;

/// Reads a whole small file (at most [`READ_ALL_LIMIT`]) into memory, verified, with the
/// same replica fallback. The buffer grows as bytes arrive, not by the recorded size.
pub async fn read_all(nodes: &StorageNodeClient, plan: ReadPlan) -> Result<Bytes, ApiError> {
    if plan.size > READ_ALL_LIMIT {
        return Err(ApiError::PayloadTooLarge(format!(
            "{:?} is {} bytes; at most {READ_ALL_LIMIT} bytes are read into memory",
            plan.name, plan.size
        )));
    }
    let mut reader = Reader {
        nodes: nodes.clone(),
        hash: plan.hash.clone(),
        replicas: plan.replicas,
        next_replica: 0,
        pos: 0,
        end: plan.size,
        current: None,
        hasher: Some(blake3::Hasher::new()),
        errors: Vec::new(),
    };
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk().await {
        let chunk = chunk.map_err(|e| ApiError::Unavailable(format!("{}: {e}", plan.name)))?;
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// Serves `plan` (all of it, or `range`).
pub async fn serve(
    nodes: &StorageNodeClient,
    plan: ReadPlan,
    range: Option<ByteRange>,
) -> Result<Response, ApiError> {
    let whole = ByteRange {
        start: 0,
        end: plan.size,
    };
    let wanted = range.unwrap_or(whole);
    let mut reader = Reader {
        nodes: nodes.clone(),
        hash: plan.hash.clone(),
        replicas: plan.replicas.clone(),
        next_replica: 0,
        pos: wanted.start,
        end: wanted.end,
        current: None,
        hasher: range.is_none().then(blake3::Hasher::new),
        errors: Vec::new(),
    };
    // Open a replica before answering, so "no replica can serve it" is a proper error.
    if wanted.end > wanted.start && !reader.open_next().await {
        return Err(ApiError::Unavailable(format!(
            "no replica of {:?} version {} could be read: {}",
            plan.name,
            plan.version,
            reader.errors.join("; ")
        )));
    }
    let len = wanted.end - wanted.start;
    let body = Body::from_stream(futures::stream::unfold(reader, |mut r| async move {
        r.next_chunk().await.map(|item| (item, r))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, value(len.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(format!("\"{}\"", plan.hash)));
    h.insert(idunno_api::headers::HASH_HEADER, value(plan.hash.clone()));
    h.insert(
        idunno_api::headers::VERSION_HEADER,
        value(plan.version.to_string()),
    );
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            value(format!(
                "bytes {}-{}/{}",
                wanted.start,
                wanted.end - 1,
                plan.size
            )),
        );
    }
    Ok(resp)
}

/// Reads `[pos, end)` of a blob, moving to the next replica when one fails or stalls for the
/// client's progress timeout.
struct Reader {
    nodes: StorageNodeClient,
    hash: String,
    replicas: Vec<String>,
    next_replica: usize,
    pos: u64,
    end: u64,
    current: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Verifies the whole content (only when the whole file is read).
    hasher: Option<blake3::Hasher>,
    errors: Vec<String>,
}

impl Reader {
    /// Opens the remaining range on the next replica that answers; false if none does.
    async fn open_next(&mut self) -> bool {
        while self.next_replica < self.replicas.len() {
            let addr = self.replicas[self.next_replica].clone();
            self.next_replica += 1;
            let req = self
                .nodes
                .request(
                    reqwest::Method::GET,
                    &addr,
                    &format!("/internal/blobs/{}", self.hash),
                )
                .header(
                    header::RANGE.as_str(),
                    format!("bytes={}-{}", self.pos, self.end - 1),
                );
            match tokio::time::timeout(self.nodes.timeout(), req.send()).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    self.current = Some(resp.bytes_stream().boxed());
                    return true;
                }
                Ok(Ok(resp)) => self.errors.push(format!("{addr}: {}", resp.status())),
                Ok(Err(e)) => self.errors.push(format!("{addr}: {e}")),
                Err(_) => {
                    tracing::warn!(%addr, hash = %self.hash, "replica did not answer in time; trying the next");
                    self.errors.push(format!(
                        "{addr}: no answer within {:?}",
                        self.nodes.timeout()
                    ));
                }
            }
        }
        false
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if self.pos >= self.end {
                return None;
            }
            let Some(stream) = self.current.as_mut() else {
                if self.open_next().await {
                    continue;
                }
                let why = format!("every replica failed: {}", self.errors.join("; "));
                self.pos = self.end;
                self.hasher = None;
                return Some(Err(std::io::Error::other(why)));
            };
            match tokio::time::timeout(self.nodes.timeout(), stream.next()).await {
                Ok(Some(Ok(mut chunk))) => {
                    let room = (self.end - self.pos) as usize;
                    if chunk.len() > room {
                        chunk.truncate(room);
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.pos += chunk.len() as u64;
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    if self.pos >= self.end {
                        // The last piece goes out only once the whole content checks out.
                        if let Some(hasher) = self.hasher.take() {
                            let got = hasher.finalize().to_hex().to_string();
                            if got != self.hash {
                                tracing::error!(hash = %self.hash, %got, "content hash mismatch on read");
                                return Some(Err(std::io::Error::other("content hash mismatch")));
                            }
                        }
                    }
                    return Some(Ok(chunk));
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(hash = %self.hash, pos = self.pos, error = %e, "replica broke off; trying the next");
                    self.errors.push(e.to_string());
                    self.current = None;
                }
                Ok(None) => {
                    // Ended early: that replica did not have all of it.
                    self.errors
                        .push(format!("a replica ended at byte {}", self.pos));
                    self.current = None;
                }
                Err(_) => {
                    tracing::warn!(hash = %self.hash, pos = self.pos, "replica stalled; resuming on the next");
                    self.errors.push(format!(
                        "a replica sent nothing for {:?} at byte {}",
                        self.nodes.timeout(),
                        self.pos
                    ));
                    self.current = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_all_refuses_a_file_too_big_for_memory_before_reading() {
        let nodes = StorageNodeClient::new(reqwest::Client::new(), idunno_api::Scheme::Http, None);
        let plan = ReadPlan {
            name: "huge.bin".into(),
            version: 1,
            hash: "0".repeat(64),
            size: READ_ALL_LIMIT + 1,
            // Nothing listens here: the answer must come without trying.
            replicas: vec!["127.0.0.1:1".into()],
        };
        match read_all(&nodes, plan).await {
            Err(ApiError::PayloadTooLarge(msg)) => assert!(msg.contains("huge.bin"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ranges_parse() {
        let r = |s: &str| parse_range(Some(s), 100);
        assert_eq!(
            r("bytes=0-9").unwrap(),
            Some(ByteRange { start: 0, end: 10 })
        );
        assert_eq!(
            r("bytes=90-").unwrap(),
            Some(ByteRange {
                start: 90,
                end: 100
            })
        );
        assert_eq!(
            r("bytes=-5").unwrap(),
            Some(ByteRange {
                start: 95,
                end: 100
            })
        );
        assert_eq!(
            r("bytes=50-1000").unwrap(),
            Some(ByteRange {
                start: 50,
                end: 100
            })
        );
        assert_eq!(parse_range(None, 100).unwrap(), None);
        // The same answers as the storage nodes give: malformed 400, outside 416.
        for bad in [
            "bytes=5-2",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=0-1,3-4",
        ] {
            assert!(matches!(r(bad), Err(ApiError::BadRequest(_))), "{bad}");
        }
        assert!(matches!(
            r("bytes=100-"),
            Err(ApiError::RangeNotSatisfiable(_))
        ));
    }
}
