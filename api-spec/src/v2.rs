//! The Open Inference Protocol v2 (KServe v2, REST), as Triton, KServe, Seldon MLServer and
//! TorchServe serve it: the JSON bodies of `/v2`, `/v2/models/{m}` and
//! `/v2/models/{m}/infer`, and the binary tensor data extension (a JSON header of
//! `Inference-Header-Content-Length` bytes, then the tensors' raw bytes in the order of the
//! inputs or outputs whose `parameters.binary_data_size` says how many).
//!
//! Only what IDunno's models take and give is decoded: `FP32` and `BYTES` tensors.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The header that says how long the JSON part of a binary-extension body is.
pub const HEADER_LENGTH_HEADER: &str = "inference-header-content-length";

/// The input that takes already preprocessed images (`[N, 3, S, S]`, `FP32`).
pub const TENSOR_INPUT: &str = "input";
/// The input that takes encoded images (JPEG, PNG, …; `[N]` or `[N, 1]`, `BYTES`).
pub const IMAGE_INPUT: &str = "image";
/// The network's raw outputs (`[N, classes]`, `FP32`).
pub const LOGITS_OUTPUT: &str = "logits";
/// Their softmax (`[N, classes]`, `FP32`).
pub const PROBABILITIES_OUTPUT: &str = "probabilities";
/// Request and output parameter: answer with binary data.
pub const BINARY_DATA: &str = "binary_data";
/// Request parameter: answer every output with binary data.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";
/// Input and output parameter: the size of the tensor's binary data.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Output parameter: the top `k` classes as `BYTES` `"score:index:label"`.
pub const CLASSIFICATION: &str = "classification";
/// Request parameter: how long the server may take, in microseconds (as Triton's).
pub const TIMEOUT: &str = "timeout";

/// `GET /v2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    pub extensions: Vec<String>,
}

/// A tensor's name, datatype and shape (`-1`: any size) in model metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{m}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// `POST /v2/models/{m}/infer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<RequestInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor of a request; `data` is absent when the tensor comes as binary data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// One output a request asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

/// The answer to an inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor of an answer; `data` is absent when it comes as binary data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A request body split into its JSON header and the binary data after it.
#[derive(Debug)]
pub struct SplitBody<'a> {
    pub header: &'a [u8],
    pub binary: &'a [u8],
}

/// Splits a request or response body by the value of [`HEADER_LENGTH_HEADER`] (`None`: all
/// JSON).
pub fn split_body<'a>(
    body: &'a [u8],
    header_length: Option<&str>,
) -> Result<SplitBody<'a>, String> {
    let Some(value) = header_length else {
        return Ok(SplitBody {
            header: body,
            binary: &[],
        });
    };
    let n: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("{HEADER_LENGTH_HEADER} {value:?} is not a length"))?;
    if n > body.len() {
        return Err(format!(
            "{HEADER_LENGTH_HEADER} is {n} but the body has only {} bytes",
            body.len()
        ));
    }
    let (header, binary) = body.split_at(n);
    Ok(SplitBody { header, binary })
}

/// The `binary_data_size` parameter of an input or output, if it has one.
pub fn binary_data_size(parameters: &Option<Map<String, Value>>) -> Result<Option<usize>, String> {
    match parameters.as_ref().and_then(|p| p.get(BINARY_DATA_SIZE)) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{BINARY_DATA_SIZE} {v} is not a size")),
    }
}

/// A boolean parameter (`false` when absent); anything but a boolean is an error.
pub fn bool_parameter(parameters: &Option<Map<String, Value>>, name: &str) -> Result<bool, String> {
    match parameters.as_ref().and_then(|p| p.get(name)) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("parameter {name} must be a boolean, not {v}")),
    }
}

/// A non-negative integer parameter, if present.
pub fn uint_parameter(
    parameters: &Option<Map<String, Value>>,
    name: &str,
) -> Result<Option<u64>, String> {
    match parameters.as_ref().and_then(|p| p.get(name)) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("parameter {name} must be a non-negative integer, not {v}")),
    }
}

/// The elements of a `BYTES` tensor in the binary extension's layout: each a 4-byte
/// little-endian length, then that many bytes.
pub fn decode_bytes_elements(mut raw: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return Err("a BYTES element's length is cut off".into());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(format!(
                "a BYTES element says {len} bytes but {} are left",
                rest.len()
            ));
        }
        out.push(rest[..len].to_vec());
        raw = &rest[len..];
    }
    Ok(out)
}

/// `BYTES` elements in the binary extension's layout.
pub fn encode_bytes_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Little-endian `f32`s from binary data.
pub fn decode_f32s(raw: &[u8]) -> Result<Vec<f32>, String> {
    if !raw.len().is_multiple_of(4) {
        return Err(format!(
            "{} bytes of FP32 data is not a whole number of elements",
            raw.len()
        ));
    }
    Ok(raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// `f32`s as little-endian binary data.
pub fn encode_f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The numbers of a JSON `FP32` tensor, nested (`[[1, 2], [3, 4]]`) or flat, in row-major
/// order.
pub fn json_f32s(data: &Value) -> Result<Vec<f32>, String> {
    fn walk(v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            Value::Number(n) => {
                let x = n.as_f64().ok_or_else(|| format!("{n} is not a number"))?;
                out.push(x as f32);
                Ok(())
            }
            other => Err(format!("FP32 data holds {other}, not a number")),
        }
    }
    let mut out = Vec::new();
    walk(data, &mut out)?;
    Ok(out)
}

/// The strings of a JSON `BYTES` tensor, nested or flat, in row-major order.
pub fn json_strings(data: &Value) -> Result<Vec<String>, String> {
    fn walk(v: &Value, out: &mut Vec<String>) -> Result<(), String> {
        match v {
            Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            Value::String(s) => {
                out.push(s.clone());
                Ok(())
            }
            other => Err(format!("BYTES data holds {other}, not a string")),
        }
    }
    let mut out = Vec::new();
    walk(data, &mut out)?;
    Ok(out)
}

/// The number of elements of a shape; `None` if a dimension is negative or it overflows.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| {
        usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip_and_truncation_is_an_error() {
        let raw = encode_bytes_elements([b"ab".as_slice(), b"", b"xyz"]);
        assert_eq!(
            decode_bytes_elements(&raw).unwrap(),
            vec![b"ab".to_vec(), vec![], b"xyz".to_vec()]
        );
        assert!(decode_bytes_elements(&raw[..raw.len() - 1]).is_err());
        assert!(decode_bytes_elements(&[1, 0]).is_err());
    }

    #[test]
    fn body_splits_at_the_header_length() {
        let body = b"{\"a\":1}BIN";
        let split = split_body(body, Some("7")).unwrap();
        assert_eq!(
            (split.header, split.binary),
            (&b"{\"a\":1}"[..], &b"BIN"[..])
        );
        assert!(split_body(body, Some("99")).is_err());
        assert!(split_body(body, Some("x")).is_err());
        assert_eq!(split_body(body, None).unwrap().binary.len(), 0);
    }

    #[test]
    fn json_tensors_flatten_in_row_major_order() {
        let v: Value = serde_json::json!([[1, 2.5], [3, 4]]);
        assert_eq!(json_f32s(&v).unwrap(), vec![1.0, 2.5, 3.0, 4.0]);
        assert!(json_f32s(&serde_json::json!(["a"])).is_err());
        assert_eq!(
            json_strings(&serde_json::json!([["a"], ["b"]])).unwrap(),
            vec!["a", "b"]
        );
        assert_eq!(element_count(&[2, 3, 4]), Some(24));
        assert_eq!(element_count(&[2, -1]), None);
        assert_eq!(
            decode_f32s(&encode_f32s(&[1.5, -2.0])).unwrap(),
            vec![1.5, -2.0]
        );
        assert!(decode_f32s(&[0, 0, 0]).is_err());
    }
}
