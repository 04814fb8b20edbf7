//! Online batches between the leader and a worker: single inference requests (`/v2`),
//! batched by the leader and handed out in a lease answer with their inputs inline (they
//! live in the leader's memory, not in SDFS or the Raft log), and the worker's outputs
//! coming back (`POST /v1/online/{batch}/complete`).

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::arch::Arch;
use crate::result::Class;

/// An online batch handed to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineLease {
    /// `"online-<epoch>-<n>"`: unique across leaders (the epoch is random per coordinator
    /// process).
    pub batch_id: String,
    /// Registry name of the model, its architecture and weights location.
    pub model: String,
    pub arch: Arch,
    pub weights: String,
    pub input_size: u32,
    /// The declared CPU time per query of a `synthetic` model (0 for real architectures).
    #[serde(default)]
    pub cost_ms: u32,
    /// The batch's images, request after request.
    pub inputs: Vec<OnlineInput>,
    /// How many top classes (with their labels) each output should name.
    #[serde(default)]
    pub top_k: u32,
}

/// One image of an online batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OnlineInput {
    /// An encoded image (JPEG, PNG, …), decoded and preprocessed by the worker as for jobs.
    Image { data: Base64 },
    /// A preprocessed `[3, S, S]` image, little-endian `f32`.
    Tensor { data: Base64 },
}

/// `POST /v1/online/{batch}/complete`: one output per input, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineCompletion {
    pub worker: String,
    pub outputs: Vec<OnlineOutput>,
    /// Worker time spent on the batch.
    #[serde(default)]
    pub compute_ms: u64,
}

/// The network's raw output for one image (little-endian `f32` logits) with its top
/// classes, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits: Option<Base64>,
    /// The `top_k` classes by logit, best first (probabilities are the softmax's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<Class>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error is the input's fault (not an image, wrong size), not the worker's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bad_input: bool,
}

/// Bytes that travel in JSON as a standard base64 string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Base64(pub Vec<u8>);

impl Base64 {
    /// Little-endian `f32`s.
    pub fn from_f32s(values: &[f32]) -> Base64 {
        Base64(crate::v2::encode_f32s(values))
    }

    /// The bytes read as little-endian `f32`s.
    pub fn to_f32s(&self) -> Result<Vec<f32>, String> {
        crate::v2::decode_f32s(&self.0)
    }
}

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Base64)
            .map_err(serde::de::Error::custom)
    }
}

/// Standard base64 text to bytes (`BYTES` inputs in JSON carry images so).
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_outputs_round_trip_through_json() {
        let lease = OnlineLease {
            batch_id: "online-0badcafe-1".into(),
            model: "m".into(),
            arch: Arch::ResNet18,
            weights: "w".into(),
            input_size: 224,
            cost_ms: 0,
            inputs: vec![
                OnlineInput::Image {
                    data: Base64(vec![0, 255, 7]),
                },
                OnlineInput::Tensor {
                    data: Base64::from_f32s(&[1.0, -0.5]),
                },
            ],
            top_k: 0,
        };
        let text = serde_json::to_string(&lease).unwrap();
        assert!(text.contains(r#""kind":"image","data":"AP8H""#), "{text}");
        let back: OnlineLease = serde_json::from_str(&text).unwrap();
        assert_eq!(back, lease);
        let OnlineInput::Tensor { data } = &back.inputs[1] else {
            panic!("not a tensor")
        };
        assert_eq!(data.to_f32s().unwrap(), vec![1.0, -0.5]);
        assert!(serde_json::from_str::<Base64>("\"***\"").is_err());
    }
}
