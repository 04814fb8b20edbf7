//! Model registry bodies: a model is a name bound to an architecture and a weights file.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// `POST /v1/models`: register (or replace) a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewModel {
    /// Registry name, e.g. `resnet50`; what jobs refer to.
    pub name: String,
    /// Architecture, e.g. `resnet50`, `inception_v3`, `efficientnet_lite0`.
    pub arch: String,
    /// Where the weights are: an SDFS path (`models/resnet50.safetensors`).
    pub weights: String,
    /// Input side in pixels; defaults to the architecture's own (224 or 299).
    #[serde(default)]
    pub input_size: Option<u32>,
}

/// A registered model as the registry reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub name: String,
    pub arch: String,
    pub weights: String,
    pub input_size: u32,
    pub created_at_ms: Millis,
    /// Workers that reported this model loaded (leader soft state; empty on a follower's stale read).
    #[serde(default)]
    pub loaded_on: Vec<String>,
}

/// The architectures the workers can run, with their default input size.
pub const ARCHITECTURES: &[(&str, u32)] = &[
    ("resnet18", 224),
    ("resnet34", 224),
    ("resnet50", 224),
    ("resnet101", 224),
    ("resnet152", 224),
    ("inception_v3", 299),
    ("efficientnet_lite0", 224),
];

/// The default input size of a known architecture, or `None` if the name is unknown.
pub fn default_input_size(arch: &str) -> Option<u32> {
    ARCHITECTURES
        .iter()
        .find(|(name, _)| *name == arch)
        .map(|(_, size)| *size)
}
