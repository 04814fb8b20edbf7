//! `/v2`: the Open Inference Protocol (KServe v2, REST) on every coordinator — server and
//! model metadata and health, and `POST /v2/models/{m}/infer`, with the binary tensor data
//! extension and the classification extension. Reads are served by any node; an inference
//! request is forwarded to the leader, which batches it with others ([`crate::online`]) for
//! a worker. What a model takes and gives is stated by its metadata:
//!
//! * `input` `FP32 [N, 3, S, S]`: images already preprocessed (as for jobs: resized,
//!   centre-cropped, normalised with ImageNet's mean and deviation), or
//! * `image` `BYTES [N]` (or `[N, 1]`): encoded images (JPEG, PNG, …; raw bytes through the
//!   binary extension, base64 strings in JSON), decoded and preprocessed by the worker;
//! * outputs `logits` and `probabilities`, `FP32 [N, classes]`; with the `classification`
//!   parameter an output is instead the top `k` classes as `BYTES [N, k]`
//!   `"score:index:label"`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idunno_api::online::{decode_base64, Base64, OnlineInput, OnlineOutput};
use idunno_api::v2::{self as proto, *};
use serde_json::{json, Map, Value};

use crate::app::Coordinator;
use crate::error::{ApiError, ApiPath};
use crate::online::OnlineFailure;
use crate::state::models::ModelRecord;

/// Images one request may carry.
pub const MAX_REQUEST_IMAGES: usize = 64;
/// Classes of every architecture's output (ImageNet-1k).
const CLASSES: i64 = 1000;
/// The only version of a model.
const VERSION: &str = "1";

pub fn router() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_version_metadata),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_version_ready),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(infer_version),
        )
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "idunno".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into(), "classification".into()],
    })
}

async fn live() -> Json<Value> {
    Json(json!({"live": true}))
}

/// Ready: a leader is known and some worker is alive.
async fn ready(State(c): State<Arc<Coordinator>>) -> Response {
    match not_ready(&c, None) {
        None => Json(json!({"ready": true})).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "error": why})),
        )
            .into_response(),
    }
}

/// Why this node cannot serve inference now (of `model`, if given), if it cannot.
fn not_ready(c: &Coordinator, model: Option<&str>) -> Option<String> {
    if c.leader().is_none() {
        return Some("no leader is known".into());
    }
    let alive = c.config.lease_timeout();
    let workers = c.workers();
    let any = workers.list().into_iter().any(|w| {
        Duration::from_millis(w.last_seen_ms_ago) < alive
            && model.is_none_or(|m| workers.accepts(&w.id, m))
    });
    (!any).then(|| match model {
        Some(m) => format!("no live worker runs model {m:?}"),
        None => "no live worker".into(),
    })
}

fn record(c: &Coordinator, model: &str) -> Result<ModelRecord, ApiError> {
    c.shared
        .read()
        .state
        .models
        .get(model)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("no model named {model:?}")))
}

fn check_version(model: &str, version: &str) -> Result<(), ApiError> {
    if version == VERSION {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "model {model:?} has only version {VERSION}, not {version:?}"
        )))
    }
}

fn metadata(m: &ModelRecord) -> ModelMetadata {
    let s = i64::from(m.input_size);
    let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
        name: name.into(),
        datatype: datatype.into(),
        shape,
    };
    ModelMetadata {
        name: m.name.clone(),
        versions: vec![VERSION.into()],
        platform: format!("idunno_{}", m.arch),
        inputs: vec![
            tensor(TENSOR_INPUT, "FP32", vec![-1, 3, s, s]),
            tensor(IMAGE_INPUT, "BYTES", vec![-1]),
        ],
        outputs: vec![
            tensor(LOGITS_OUTPUT, "FP32", vec![-1, CLASSES]),
            tensor(PROBABILITIES_OUTPUT, "FP32", vec![-1, CLASSES]),
        ],
    }
}

async fn model_metadata(
    State(c): State<Arc<Coordinator>>,
    ApiPath(model): ApiPath<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    Ok(Json(metadata(&record(&c, &model)?)))
}

async fn model_version_metadata(
    State(c): State<Arc<Coordinator>>,
    ApiPath((model, version)): ApiPath<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    check_version(&model, &version)?;
    Ok(Json(metadata(&record(&c, &model)?)))
}

/// Ready: registered, and a live worker runs it.
async fn model_ready(
    State(c): State<Arc<Coordinator>>,
    ApiPath(model): ApiPath<String>,
) -> Result<Response, ApiError> {
    record(&c, &model)?;
    Ok(match not_ready(&c, Some(&model)) {
        None => Json(json!({"name": model, "ready": true})).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"name": model, "ready": false, "error": why})),
        )
            .into_response(),
    })
}

async fn model_version_ready(
    state: State<Arc<Coordinator>>,
    ApiPath((model, version)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    check_version(&model, &version)?;
    model_ready(state, ApiPath(model)).await
}

async fn infer_version(
    state: State<Arc<Coordinator>>,
    ApiPath((model, version)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_version(&model, &version)?;
    infer(state, ApiPath(model), headers, body).await
}

/// An output the request asked for.
#[derive(Debug, Clone, PartialEq)]
struct Wanted {
    name: String,
    /// Top `k` classes instead of the tensor.
    classification: Option<u32>,
    binary: bool,
}

/// A request, checked and decoded.
#[derive(Debug)]
struct Parsed {
    id: Option<String>,
    inputs: Vec<OnlineInput>,
    outputs: Vec<Wanted>,
    timeout: Option<Duration>,
}

async fn infer(
    State(c): State<Arc<Coordinator>>,
    ApiPath(model): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(r.body_text()),
        _ => ApiError::BadRequest(r.body_text()),
    })?;
    let record = record(&c, &model)?;
    let header_length = headers
        .get(HEADER_LENGTH_HEADER)
        .map(|v| v.to_str().unwrap_or("not text"));
    let parsed = parse(&body, header_length, record.input_size).map_err(ApiError::BadRequest)?;
    let limit = Duration::from_millis(c.config.online_timeout_ms);
    let deadline = Instant::now() + parsed.timeout.map_or(limit, |t| t.min(limit));
    let top_k = parsed
        .outputs
        .iter()
        .filter_map(|o| o.classification)
        .max()
        .unwrap_or(0);
    let images = parsed.inputs.len();
    let reply = c
        .online
        .submit(&model, parsed.inputs, top_k, deadline)
        .map_err(failure)?;
    let outputs = match tokio::time::timeout_at(deadline.into(), reply).await {
        Err(_) => {
            return Err(ApiError::Unavailable(
                "the request's deadline passed before a worker answered it".into(),
            ))
        }
        Ok(Err(_)) => {
            return Err(ApiError::Unavailable(
                "the leader dropped the request; retry".into(),
            ))
        }
        Ok(Ok(reply)) => reply.map_err(failure)?,
    };
    c.metrics
        .online_answered(&model, images as u64, arrived.elapsed());
    respond(&model, parsed.id, &parsed.outputs, outputs)
}

fn failure(f: OnlineFailure) -> ApiError {
    ApiError::Unavailable(f.0)
}

/// Checks a request against the protocol and the model (`size`: its input side) and
/// decodes its images.
fn parse(body: &[u8], header_length: Option<&str>, size: u32) -> Result<Parsed, String> {
    let split = split_body(body, header_length)?;
    let request: InferRequest = serde_json::from_slice(split.header)
        .map_err(|e| format!("the inference request is not valid: {e}"))?;
    let binary_output = bool_parameter(&request.parameters, BINARY_DATA_OUTPUT)?;
    let timeout = uint_parameter(&request.parameters, proto::TIMEOUT)?.map(Duration::from_micros);
    let [input] = request.inputs.as_slice() else {
        return Err(format!(
            "a request has exactly one input ({TENSOR_INPUT:?} or {IMAGE_INPUT:?}), not {}",
            request.inputs.len()
        ));
    };
    let binary = match binary_data_size(&input.parameters)? {
        Some(n) if n != split.binary.len() => {
            return Err(format!(
                "input {:?} says {BINARY_DATA_SIZE} {n} but {} bytes of binary data came",
                input.name,
                split.binary.len()
            ))
        }
        Some(_) if input.data.is_some() => {
            return Err(format!(
                "input {:?} has both data and {BINARY_DATA_SIZE}",
                input.name
            ))
        }
        Some(_) => Some(split.binary),
        None if !split.binary.is_empty() => {
            return Err(format!(
                "{} bytes of binary data came but no input has {BINARY_DATA_SIZE}",
                split.binary.len()
            ))
        }
        None => None,
    };
    let inputs = match input.name.as_str() {
        TENSOR_INPUT => tensor_images(input, binary, size)?,
        IMAGE_INPUT => encoded_images(input, binary)?,
        other => {
            return Err(format!(
                "no input named {other:?}: the inputs are {TENSOR_INPUT:?} (FP32) and \
                 {IMAGE_INPUT:?} (BYTES)"
            ))
        }
    };
    let outputs = wanted_outputs(request.outputs.as_deref(), binary_output)?;
    Ok(Parsed {
        id: request.id,
        inputs,
        outputs,
        timeout,
    })
}

/// The batch dimension of a shape, checked against the request limit.
fn batch_dim(shape: &[i64]) -> Result<usize, String> {
    match shape.first().map(|n| usize::try_from(*n)) {
        Some(Ok(n)) if (1..=MAX_REQUEST_IMAGES).contains(&n) => Ok(n),
        _ => Err(format!(
            "the first dimension of {shape:?} must be the number of images, 1..={MAX_REQUEST_IMAGES}"
        )),
    }
}

/// `input`: `FP32 [N, 3, S, S]`, one `[3, S, S]` tensor per image.
fn tensor_images(
    input: &RequestInput,
    binary: Option<&[u8]>,
    size: u32,
) -> Result<Vec<OnlineInput>, String> {
    if input.datatype != "FP32" {
        return Err(format!(
            "input {TENSOR_INPUT:?} is FP32, not {}",
            input.datatype
        ));
    }
    let s = i64::from(size);
    let n = batch_dim(&input.shape)?;
    if input.shape[1..] != [3, s, s] {
        return Err(format!(
            "input {TENSOR_INPUT:?} has shape [N, 3, {s}, {s}] for this model, not {:?}",
            input.shape
        ));
    }
    let values = match (binary, &input.data) {
        (Some(raw), _) => decode_f32s(raw)?,
        (None, Some(data)) => json_f32s(data)?,
        (None, None) => return Err(format!("input {TENSOR_INPUT:?} has no data")),
    };
    let per_image = 3 * (size as usize) * (size as usize);
    if values.len() != n * per_image {
        return Err(format!(
            "shape {:?} needs {} values, not {}",
            input.shape,
            n * per_image,
            values.len()
        ));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(format!("input {TENSOR_INPUT:?} holds a NaN or an infinity"));
    }
    Ok(values
        .chunks_exact(per_image)
        .map(|image| OnlineInput::Tensor {
            data: Base64::from_f32s(image),
        })
        .collect())
}

/// `image`: `BYTES [N]` or `[N, 1]`, one encoded image per element.
fn encoded_images(input: &RequestInput, binary: Option<&[u8]>) -> Result<Vec<OnlineInput>, String> {
    if input.datatype != "BYTES" {
        return Err(format!(
            "input {IMAGE_INPUT:?} is BYTES, not {}",
            input.datatype
        ));
    }
    let n = batch_dim(&input.shape)?;
    if !(input.shape.len() == 1 || input.shape[1..] == [1]) {
        return Err(format!(
            "input {IMAGE_INPUT:?} has shape [N] or [N, 1], not {:?}",
            input.shape
        ));
    }
    let images = match (binary, &input.data) {
        (Some(raw), _) => decode_bytes_elements(raw)?,
        (None, Some(data)) => json_strings(data)?
            .iter()
            .enumerate()
            .map(|(i, s)| decode_base64(s).map_err(|e| format!("image {i}: {e}")))
            .collect::<Result<_, _>>()?,
        (None, None) => return Err(format!("input {IMAGE_INPUT:?} has no data")),
    };
    if images.len() != n {
        return Err(format!(
            "shape {:?} says {n} images but {} came",
            input.shape,
            images.len()
        ));
    }
    if let Some(i) = images.iter().position(Vec::is_empty) {
        return Err(format!("image {i} is empty"));
    }
    Ok(images
        .into_iter()
        .map(|data| OnlineInput::Image { data: Base64(data) })
        .collect())
}

/// The outputs to answer with: those asked for, or every output (as binary data if the
/// request said `binary_data_output`).
fn wanted_outputs(
    asked: Option<&[RequestOutput]>,
    binary_output: bool,
) -> Result<Vec<Wanted>, String> {
    let Some(asked) = asked.filter(|a| !a.is_empty()) else {
        return Ok([LOGITS_OUTPUT, PROBABILITIES_OUTPUT]
            .map(|name| Wanted {
                name: name.into(),
                classification: None,
                binary: binary_output,
            })
            .into());
    };
    let mut out: Vec<Wanted> = Vec::new();
    for o in asked {
        if o.name != LOGITS_OUTPUT && o.name != PROBABILITIES_OUTPUT {
            return Err(format!(
                "no output named {:?}: the outputs are {LOGITS_OUTPUT:?} and {PROBABILITIES_OUTPUT:?}",
                o.name
            ));
        }
        if out.iter().any(|w| w.name == o.name) {
            return Err(format!("output {:?} is asked for twice", o.name));
        }
        let classification = match uint_parameter(&o.parameters, CLASSIFICATION)? {
            None | Some(0) => None,
            Some(k) if k <= CLASSES as u64 => Some(k as u32),
            Some(k) => {
                return Err(format!(
                    "{CLASSIFICATION} {k} is more than the {CLASSES} classes"
                ))
            }
        };
        let binary = match o.parameters.as_ref().and_then(|p| p.get(BINARY_DATA)) {
            None => binary_output,
            Some(_) => bool_parameter(&o.parameters, BINARY_DATA)?,
        };
        out.push(Wanted {
            name: o.name.clone(),
            classification,
            binary,
        });
    }
    Ok(out)
}

/// The answer: the outputs asked for, in JSON or as binary data after the JSON header.
fn respond(
    model: &str,
    id: Option<String>,
    wanted: &[Wanted],
    outputs: Vec<OnlineOutput>,
) -> Result<Response, ApiError> {
    let rows = logits_rows(outputs)?;
    let n = rows.len() as i64;
    let probabilities: Vec<Vec<f32>> = rows.iter().map(|(l, _)| softmax(l)).collect();
    let mut tensors = Vec::new();
    let mut binary = Vec::new();
    for w in wanted {
        let values: Vec<&[f32]> = if w.name == LOGITS_OUTPUT {
            rows.iter().map(|(l, _)| l.as_slice()).collect()
        } else {
            probabilities.iter().map(Vec::as_slice).collect()
        };
        let (shape, datatype, data, raw) = match w.classification {
            Some(k) => {
                let labels: Vec<Vec<String>> = rows
                    .iter()
                    .zip(&values)
                    .map(|((_, top), v)| {
                        top.iter()
                            .take(k as usize)
                            .map(|c| {
                                let score = v.get(c.index).copied().unwrap_or(f32::NAN);
                                format!("{score:.6}:{}:{}", c.index, c.label)
                            })
                            .collect()
                    })
                    .collect();
                let k = labels.first().map_or(0, Vec::len) as i64;
                let flat: Vec<&str> = labels.iter().flatten().map(String::as_str).collect();
                let raw = encode_bytes_elements(flat.iter().map(|s| s.as_bytes()));
                (vec![n, k], "BYTES", json!(flat), raw)
            }
            None => {
                let classes = values.first().map_or(0, |r| r.len()) as i64;
                let flat: Vec<f32> = values.iter().flat_map(|r| r.iter().copied()).collect();
                let raw = encode_f32s(&flat);
                (vec![n, classes], "FP32", json!(flat), raw)
            }
        };
        let (parameters, data) = if w.binary {
            let mut p = Map::new();
            p.insert(BINARY_DATA_SIZE.into(), json!(raw.len()));
            binary.extend_from_slice(&raw);
            (Some(p), None)
        } else {
            (None, Some(data))
        };
        tensors.push(ResponseOutput {
            name: w.name.clone(),
            shape,
            datatype: datatype.into(),
            parameters,
            data,
        });
    }
    let answer = InferResponse {
        model_name: model.to_string(),
        model_version: Some(VERSION.into()),
        id,
        parameters: None,
        outputs: tensors,
    };
    let header = serde_json::to_vec(&answer)
        .map_err(|e| ApiError::Internal(format!("cannot encode the answer: {e}")))?;
    if binary.is_empty() && wanted.iter().all(|w| !w.binary) {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            header,
        )
            .into_response());
    }
    let length = HeaderValue::from(header.len());
    let mut body = header;
    body.extend_from_slice(&binary);
    let mut resp = Body::from(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(HEADER_LENGTH_HEADER, length);
    Ok(resp)
}

/// One image's logits and top classes.
type Row = (Vec<f32>, Vec<idunno_api::result::Class>);

/// Each image's logits and top classes; an image without them fails the request (400 when
/// the image was at fault, 503 otherwise).
fn logits_rows(outputs: Vec<OnlineOutput>) -> Result<Vec<Row>, ApiError> {
    let mut rows = Vec::with_capacity(outputs.len());
    for (i, o) in outputs.into_iter().enumerate() {
        if let Some(e) = o.error {
            let message = format!("image {i}: {e}");
            return Err(if o.bad_input {
                ApiError::BadRequest(message)
            } else {
                ApiError::Unavailable(message)
            });
        }
        let logits = o
            .logits
            .ok_or_else(|| ApiError::Internal(format!("image {i}: the worker sent no logits")))?
            .to_f32s()
            .map_err(|e| ApiError::Internal(format!("image {i}: {e}")))?;
        rows.push((logits, o.top));
    }
    if rows.windows(2).any(|w| w[0].0.len() != w[1].0.len()) {
        return Err(ApiError::Internal(
            "the worker's rows differ in length".into(),
        ));
    }
    Ok(rows)
}

/// A numerically stable softmax.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|v| f64::from(v - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_request(v: Value) -> Result<Parsed, String> {
        parse(&serde_json::to_vec(&v).unwrap(), None, 2)
    }

    #[test]
    fn an_fp32_tensor_in_json_is_cut_into_images() {
        let values: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let p = json_request(json!({
            "id": "r1",
            "inputs": [{"name": "input", "shape": [2, 3, 2, 2], "datatype": "FP32", "data": values}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]
        }))
        .unwrap();
        assert_eq!(p.id.as_deref(), Some("r1"));
        assert_eq!(p.inputs.len(), 2);
        let OnlineInput::Tensor { data } = &p.inputs[1] else {
            panic!()
        };
        assert_eq!(data.to_f32s().unwrap()[0], 12.0);
        assert_eq!(p.outputs[0].classification, Some(3));
        assert!(!p.outputs[0].binary);
    }

    #[test]
    fn binary_bytes_inputs_follow_the_json_header() {
        let header = serde_json::to_vec(&json!({
            "inputs": [{"name": "image", "shape": [2, 1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": 13}}],
            "parameters": {"binary_data_output": true}
        }))
        .unwrap();
        let mut body = header.clone();
        body.extend(encode_bytes_elements([b"abc".as_slice(), b"de"]));
        let p = parse(&body, Some(&header.len().to_string()), 224).unwrap();
        assert_eq!(
            p.inputs,
            vec![
                OnlineInput::Image {
                    data: Base64(b"abc".to_vec())
                },
                OnlineInput::Image {
                    data: Base64(b"de".to_vec())
                }
            ]
        );
        assert_eq!(p.outputs.len(), 2);
        assert!(p.outputs.iter().all(|o| o.binary));
        // A size that does not match what came is refused.
        assert!(parse(
            &body[..body.len() - 1],
            Some(&header.len().to_string()),
            224
        )
        .is_err());
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let bad = [
            json!({"inputs": []}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]}),
            json!({"inputs": [{"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [0]}]}),
            json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "INT8", "data": [0]}]}),
            json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [1, 2]}]}),
            json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["AA=="]}]}),
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["***"]}]}),
            json!({"inputs": [{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}]}),
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}],
                   "outputs": [{"name": "nope"}]}),
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}],
                   "outputs": [{"name": "logits", "parameters": {"classification": 5000}}]}),
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}],
                   "extra": 1}),
        ];
        for b in bad {
            let e = json_request(b.clone()).unwrap_err();
            assert!(!e.is_empty(), "{b}");
        }
        assert!(parse(b"not json", None, 224).is_err());
        assert!(parse(b"{}", Some("99"), 224).is_err());
    }

    #[test]
    fn classification_names_the_top_classes_with_their_scores() {
        let outputs = vec![OnlineOutput {
            logits: Some(Base64::from_f32s(&[0.0, 2.0, 1.0])),
            top: vec![
                idunno_api::result::Class {
                    index: 1,
                    label: "b".into(),
                    probability: 0.0,
                },
                idunno_api::result::Class {
                    index: 2,
                    label: "c".into(),
                    probability: 0.0,
                },
            ],
            error: None,
            bad_input: false,
        }];
        let wanted = [Wanted {
            name: LOGITS_OUTPUT.into(),
            classification: Some(2),
            binary: false,
        }];
        let resp = respond("m", None, &wanted, outputs).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let p = softmax(&[0.0, 2.0, 1.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6 && p[1] > p[2] && p[2] > p[0]);
    }
}
