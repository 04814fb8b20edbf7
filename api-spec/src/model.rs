//! Model registry bodies: a model is a name bound to an architecture and a weights file.

use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::Millis;

/// `POST /v1/models`: register (or replace) a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewModel {
    /// Registry name, e.g. `resnet50`; what jobs refer to.
    pub name: String,
    /// Architecture, e.g. `resnet50`, `inception_v3`, `efficientnet_lite0`.
    pub arch: Arch,
    /// Where the weights are: an SDFS path (`models/resnet50.safetensors`).
    pub weights: String,
    /// Input side in pixels; defaults to the architecture's own (224, 299, or 32 for
    /// `synthetic`).
    #[serde(default)]
    pub input_size: Option<u32>,
    /// `synthetic` only, and required for it: the CPU milliseconds one query costs.
    #[serde(default)]
    pub cost_ms: Option<u32>,
    /// How online requests (`/v2`) of this model are batched; unset fields take the
    /// coordinator's defaults (`--online-max-batch`, `--online-max-delay-ms`).
    #[serde(default)]
    pub online: OnlineBatching,
}

/// Dynamic batching of a model's online requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineBatching {
    /// Images per batch at most (1..=64); a request of more images runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<u32>,
    /// How long the oldest request may wait for others to fill the batch (0..=10000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_delay_ms: Option<u32>,
}

/// Largest online batch a model may ask for.
pub const MAX_ONLINE_BATCH: u32 = 64;
/// Longest queue delay a model may ask for (ms).
pub const MAX_ONLINE_DELAY_MS: u32 = 10_000;

/// A registered model as the registry reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub arch: Arch,
    pub weights: String,
    pub input_size: u32,
    pub created_at_ms: Millis,
    /// Workers that reported this model loaded (leader soft state; empty on a follower's stale read).
    #[serde(default)]
    pub loaded_on: Vec<String>,
    /// The declared CPU milliseconds per query of a `synthetic` model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_ms: Option<u32>,
    /// The scheduler's cost estimate: worker milliseconds per query, a moving average of
    /// completed batches, seeded from the architecture's FLOPs (or the declared cost).
    #[serde(default)]
    pub cost_ms_per_query: f64,
    /// How its online requests are batched (as registered; unset: the coordinator's defaults).
    #[serde(default)]
    pub online: OnlineBatching,
}

/// Largest declared cost of a synthetic query (ms).
pub const MAX_SYNTHETIC_COST_MS: u32 = 60_000;
