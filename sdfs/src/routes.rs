//! A storage node's HTTP API: `/internal/blobs…` for coordinators and workers (behind the
//! cluster secret), `/healthz`, `/readyz` and `/metrics`. Bodies stream both ways; every error is JSON.
//!
//! | route | answer |
//! |---|---|
//! | `PUT /internal/blobs` (optional `x-idunno-expect-hash`) | `201` [`StoredBlob`], once durable |
//! | `GET`/`HEAD /internal/blobs/{hash}` (optional `Range`) | `200`/`206` content, `x-idunno-hash`, `x-idunno-stamp` |
//! | `DELETE /internal/blobs/{hash}` (optional `?stamp=N`) | `204`; `412` if stored again since stamp `N` |
//! | `GET /internal/blobs` | `200` `[BlobInfo]` |
//! | `POST /internal/blobs/{hash}/fetch` [`FetchBlob`] | `201` [`StoredBlob`] |

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use idunno_api::file::{BlobInfo, FetchBlob, StoredBlob};
use serde_json::{json, Value};

use crate::blob_read::BlobRead;
use crate::blob_store::Deleted;
use crate::error::{ApiJson, ApiPath, SdfsError};
use crate::hash::BlobHash;
use crate::node::Node;
use crate::transfer::{blocking, store_stream, BlobStream};
use idunno_api::headers::{EXPECT_HASH_HEADER, HASH_HEADER, STAMP_HEADER};
use idunno_api::range::ByteRange;

/// Largest JSON request body (only `fetch` has one).
const JSON_LIMIT: usize = 64 << 10;

/// Every route of a storage node.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/internal/blobs",
            // Blob bodies stream into the store: no size limit.
            put(put_blob)
                .layer(DefaultBodyLimit::disable())
                .get(list_blobs),
        )
        .route("/internal/blobs/{hash}", get(get_blob).delete(delete_blob))
        .route("/internal/blobs/{hash}/fetch", post(fetch_blob))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(node.clone(), crate::auth::check))
        .layer(from_fn_with_state(node.clone(), count))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .with_state(node)
}

async fn healthz(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(json!({"status": "ok", "id": node.config.id}))
}

/// Ready: the last heartbeat reached a coordinator (or none is configured: a node serving
/// alone). 503 otherwise.
async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let alone = node.config.coordinator_list().is_empty();
    if alone || node.metrics.coordinators_reachable.get() == 1 {
        Json(json!({"status": "ready", "id": node.config.id})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"error": "no coordinator has answered this node's heartbeats yet",
                        "code": "unavailable"}),
            ),
        )
            .into_response()
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    node.metrics.update(node.store.totals(), node.store.stats());
    idunno_server::metrics::render(&node.metrics.registry)
}

/// `PUT /internal/blobs`: streams the body into the store.
async fn put_blob(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<StoredBlob>), SdfsError> {
    let expected = match headers.get(EXPECT_HASH_HEADER) {
        Some(v) => Some(BlobHash::parse(v.to_str().map_err(|_| {
            SdfsError::BadRequest(format!("{EXPECT_HASH_HEADER} is not text"))
        })?)?),
        None => None,
    };
    let content = body
        .into_data_stream()
        .map(|piece| piece.map_err(|e| SdfsError::Interrupted(e.to_string())));
    let stored = store_stream(&node.store, content, expected, node.shutdown.clone()).await?;
    tracing::debug!(hash = %stored.hash, size = stored.size, "blob stored");
    Ok((StatusCode::CREATED, Json(stored)))
}

/// `GET`/`HEAD /internal/blobs/{hash}`: the content, verified chunk by chunk as it is sent.
async fn get_blob(
    State(node): State<Arc<Node>>,
    ApiPath(hash): ApiPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, SdfsError> {
    let hash = BlobHash::parse(&hash)?;
    let store = node.store.clone();
    let meta = blocking(move || store.get(&hash))
        .await?
        .ok_or_else(|| no_blob(&hash))?;
    let range = match headers.get(header::RANGE) {
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| SdfsError::BadRequest("the Range header is not text".into()))?;
            Some(ByteRange::parse_header(v, meta.size)?)
        }
        None => None,
    };
    let whole = ByteRange {
        start: 0,
        end: meta.size,
    };
    let span = range.unwrap_or(whole);

    let mut response = Response::builder()
        .status(if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, span.len())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(HASH_HEADER, hash.to_hex())
        .header(STAMP_HEADER, meta.stamp);
    if range.is_some() {
        response = response.header(header::CONTENT_RANGE, span.content_range(meta.size));
    }
    let body = if method == Method::HEAD || span.is_empty() {
        Body::empty()
    } else {
        let read = BlobRead::new(node.store.clone(), hash, meta, span);
        let stream = BlobStream::start(read, node.shutdown.clone()).await?;
        Body::from_stream(stream.into_stream())
    };
    response
        .body(body)
        .map_err(|e| SdfsError::Internal(format!("building a response: {e}")))
}

/// `DELETE /internal/blobs/{hash}`, with `?stamp=N` only if the blob was not stored again
/// since it had stamp `N`.
async fn delete_blob(
    State(node): State<Arc<Node>>,
    ApiPath(hash): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, SdfsError> {
    let hash = BlobHash::parse(&hash)?;
    let stamp = parse_stamp(query.as_deref())?;
    let store = node.store.clone();
    let outcome = blocking(move || match stamp {
        Some(stamp) => store.delete_if(&hash, stamp),
        None => Ok(if store.delete(&hash)? {
            Deleted::Deleted
        } else {
            Deleted::Absent
        }),
    })
    .await?;
    match outcome {
        Deleted::Deleted => {
            tracing::debug!(%hash, "blob deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Deleted::Absent => Err(no_blob(&hash)),
        Deleted::Changed { stamp } => {
            tracing::debug!(%hash, stamp, "blob stored again since; not deleted");
            Err(SdfsError::StampChanged { stamp })
        }
    }
}

/// The `stamp` of a delete's query string (`stamp=N`; nothing else is accepted).
fn parse_stamp(query: Option<&str>) -> Result<Option<u64>, SdfsError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let bad = || SdfsError::BadRequest(format!("bad query {query:?} (expected stamp=N)"));
    let value = query.strip_prefix("stamp=").ok_or_else(bad)?;
    value.parse().map(Some).map_err(|_| bad())
}

/// `GET /internal/blobs`.
async fn list_blobs(State(node): State<Arc<Node>>) -> Result<Json<Vec<BlobInfo>>, SdfsError> {
    let store = node.store.clone();
    Ok(Json(blocking(move || store.list()).await?))
}

/// `POST /internal/blobs/{hash}/fetch`: copy a blob from another node.
async fn fetch_blob(
    State(node): State<Arc<Node>>,
    ApiPath(hash): ApiPath<String>,
    ApiJson(body): ApiJson<FetchBlob>,
) -> Result<(StatusCode, Json<StoredBlob>), SdfsError> {
    let hash = BlobHash::parse(&hash)?;
    let stored = crate::fetch::fetch_blob(
        &node.store,
        &node.peers,
        &body.from,
        hash,
        node.shutdown.clone(),
    )
    .await?;
    node.metrics.fetches.inc();
    tracing::debug!(%hash, from = %body.from, "blob fetched");
    Ok((StatusCode::CREATED, Json(stored)))
}

fn no_blob(hash: &BlobHash) -> SdfsError {
    SdfsError::NotFound(format!("no blob {hash} on this node"))
}

async fn not_found(req: Request) -> SdfsError {
    SdfsError::NotFound(format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> SdfsError {
    SdfsError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

/// Counts requests and error answers.
async fn count(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    node.metrics
        .http
        .record(&method, response.status(), started.elapsed());
    response
}
