//! The worker's SDFS read through the coordinators: a file (model weights) into the local
//! cache.
//!
//! Reads stream to a temporary file while hashing, and keep the file only if its BLAKE3 is
//! the one the coordinator announced (`x-idunno-hash`). Inputs are not read here: they come
//! straight from storage nodes ([`crate::inputs`]). Results are not written here: a batch's
//! completion carries its results object ([`crate::results`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use idunno_api::Client;
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::error::WorkerError;

/// Header with the BLAKE3 (hex) of a file's content, on `GET /v1/files/{name}`.
pub use idunno_api::headers::HASH_HEADER;

/// How long a read keeps trying coordinators that are down or have no leader.
const READ_DEADLINE: Duration = Duration::from_secs(15);

/// Longest wait for the next chunk of a file being read.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// `/v1/files/{name}` with the name percent-encoded segment by segment.
pub fn file_route(name: &str) -> String {
    format!("/v1/files/{}", idunno_api::encoding::encode_path(name))
}

/// A file read into the cache folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    /// `<dir>/<hash><suffix>`.
    pub path: PathBuf,
    /// Whether the file was already there (nothing was downloaded).
    pub reused: bool,
}

/// Reads SDFS file `name` into `dir/<blake3><suffix>`, unless a file of that hash is already
/// there (checked by hashing it). The hash comes from the coordinator's answer; the bytes
/// read must match it.
pub async fn read_into_cache(
    client: &Client,
    name: &str,
    dir: &Path,
    suffix: &str,
) -> Result<CachedFile, WorkerError> {
    let io_err = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| WorkerError::Io {
            action,
            path,
            source,
        }
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io_err("cannot create the cache folder", dir))?;
    let response = open(client, name).await?;
    let announced = announced_hash(response.headers());
    if let Some(hash) = &announced {
        let path = dir.join(format!("{hash}{suffix}"));
        if cached_copy_is_valid(&path, hash).await {
            tracing::debug!(file = %name, path = %path.display(), "weights already in the cache");
            return Ok(CachedFile {
                hash: hash.clone(),
                path,
                reused: true,
            });
        }
    }

    // Stream into a temporary file in the same folder, hashing on the way.
    let (file, temp_path) = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(dir)
        .map_err(io_err("cannot create a file in", dir))?
        .into_parts();
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let mut hasher = blake3::Hasher::new();
    let mut stream = response.bytes_stream();
    loop {
        let next = tokio::time::timeout(CHUNK_TIMEOUT, stream.next())
            .await
            .map_err(|_| WorkerError::Download {
                name: name.to_string(),
                reason: format!("no data for {} s", CHUNK_TIMEOUT.as_secs()),
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| WorkerError::Download {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(io_err("cannot write", &temp_path))?;
    }
    file.flush()
        .await
        .map_err(io_err("cannot write", &temp_path))?;
    file.get_ref()
        .sync_all()
        .await
        .map_err(io_err("cannot sync", &temp_path))?;
    drop(file);

    let actual = hasher.finalize().to_hex().to_string();
    if let Some(expected) = &announced {
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(WorkerError::HashMismatch {
                what: format!("SDFS file {name}"),
                expected: expected.clone(),
                actual,
            });
        }
    } else {
        tracing::warn!(file = %name, "the coordinator announced no hash; keeping the file unverified");
    }
    let path = dir.join(format!("{actual}{suffix}"));
    temp_path.persist(&path).map_err(|e| WorkerError::Io {
        action: "cannot rename a download to",
        path: path.clone(),
        source: e.error,
    })?;
    Ok(CachedFile {
        hash: actual,
        path,
        reused: false,
    })
}

/// `GET /v1/files/{name}` on the first coordinator that answers definitely (not 5xx, not
/// unreachable), trying them in turn until [`READ_DEADLINE`].
async fn open(client: &Client, name: &str) -> Result<reqwest::Response, WorkerError> {
    let route = file_route(name);
    let started = Instant::now();
    let mut last = String::new();
    loop {
        for base in client.coordinators() {
            let mut request = client.http().get(format!("{base}{route}"));
            if let Some(token) = client.token() {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) if response.status().is_server_error() => {
                    last = format!("{base}: answered {}", response.status());
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(WorkerError::coordinator(
                        format!("GET {route}"),
                        idunno_api::ClientError::Api {
                            status: status.as_u16(),
                            body: error_body(status, &body),
                        },
                    ));
                }
                Err(e) => last = format!("{base}: {e}"),
            }
        }
        if started.elapsed() >= READ_DEADLINE {
            return Err(WorkerError::coordinator(
                format!("GET {route}"),
                idunno_api::ClientError::Unavailable {
                    tried: client.coordinators().join(","),
                    last,
                },
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn error_body(status: StatusCode, body: &str) -> idunno_api::ErrorBody {
    serde_json::from_str(body).unwrap_or_else(|_| idunno_api::ErrorBody {
        error: if body.is_empty() {
            status.to_string()
        } else {
            body.to_string()
        },
        code: "http".into(),
        leader: None,
    })
}

/// The content hash a file answer announces: `x-idunno-hash`, else a quoted `etag`.
fn announced_hash(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().trim_matches('"').to_ascii_lowercase())
    };
    value(HASH_HEADER)
        .or_else(|| value("etag"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `path` exists and hashes to `hash` (a damaged copy is removed).
async fn cached_copy_is_valid(path: &Path, hash: &str) -> bool {
    let path = path.to_path_buf();
    let hash = hash.to_string();
    tokio::task::spawn_blocking(move || {
        let Ok(mut file) = std::fs::File::open(&path) else {
            return false;
        };
        let mut hasher = blake3::Hasher::new();
        if hasher.update_reader(&mut file).is_err() {
            return false;
        }
        let ok = hasher.finalize().to_hex().eq_ignore_ascii_case(&hash);
        if !ok {
            tracing::warn!(path = %path.display(), "cached file is damaged; downloading it again");
            let _ = std::fs::remove_file(&path);
        }
        ok
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_routes_keep_slashes_and_encode_the_rest() {
        assert_eq!(
            file_route("results/7/7-3.json"),
            "/v1/files/results/7/7-3.json"
        );
        assert_eq!(file_route("a b/é?.png"), "/v1/files/a%20b/%C3%A9%3F.png");
    }

    #[test]
    fn the_announced_hash_comes_from_either_header() {
        let h = blake3::hash(b"x").to_hex().to_string();
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(announced_hash(&headers), None);
        headers.insert("etag", format!("\"{h}\"").parse().unwrap());
        assert_eq!(announced_hash(&headers), Some(h.clone()));
        headers.insert(HASH_HEADER, "not-a-hash".parse().unwrap());
        assert_eq!(announced_hash(&headers), None);
    }
}
