//! Image-classification models the IDunno worker runs, on candle (CPU, f32).
//!
//! The public surface:
//! * [`Arch`] — the supported architectures, their names, input sizes and
//!   approximate cost ([`Arch::gflops`]), used by the scheduler.
//! * [`Model`] — a loaded network: [`Model::load`] (a local safetensors file)
//!   or [`Model::from_safetensors_bytes`], then [`Model::preprocess`],
//!   [`Model::forward`] (a batch in one call, its images run side by side)
//!   and [`Model::classify`] (preprocess, forward, softmax, top-k
//!   [`Prediction`]s).
//! * [`imagenet_label`] — the ImageNet-1k class names.
//! * [`weights`] — a deterministic, seeded generator of weights files with the
//!   exact tensor names and shapes (tests, benchmarks, demos without downloads).
//! * [`hub`] — where the real weights live on the Hugging Face hub (URLs and
//!   tensor-name mapping only; no HTTP client here).
//!
//! One file per architecture (`resnet.rs`, `inception_v3.rs`,
//! `efficientnet_lite0.rs`, and `synthetic.rs`, the calibration model of
//! declared cost); this module does no scheduling, caching or networking.

mod efficientnet_lite0;
mod error;
pub mod hub;
mod inception_v3;
mod kernels;
mod labels;
mod layers;
mod model;
pub mod preprocess;
mod resnet;
mod synthetic;
mod tensors;
pub mod weights;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use candle_core::{Device, Tensor};
pub use error::{ModelError, Result};
pub use hub::TensorNames;
pub use labels::{imagenet_label, imagenet_labels, NUM_CLASSES};
pub use model::{LoadOptions, Model, Prediction};
pub use preprocess::Preprocess;
pub use tensors::TensorSpec;

/// A supported network architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "resnet18")]
    ResNet18,
    #[serde(rename = "resnet34")]
    ResNet34,
    #[serde(rename = "resnet50")]
    ResNet50,
    #[serde(rename = "resnet101")]
    ResNet101,
    #[serde(rename = "resnet152")]
    ResNet152,
    #[serde(rename = "inception_v3")]
    InceptionV3,
    #[serde(rename = "efficientnet_lite0")]
    EfficientNetLite0,
    /// The calibration model: a declared CPU cost per image, deterministic outputs
    /// (`synthetic.rs`). Not in [`Arch::ALL`], which lists the ImageNet networks.
    #[serde(rename = "synthetic")]
    Synthetic,
}

impl Arch {
    /// Every ImageNet network, cheapest family first (not [`Arch::Synthetic`]).
    pub const ALL: [Arch; 7] = [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::ResNet152,
        Arch::InceptionV3,
        Arch::EfficientNetLite0,
    ];

    /// Canonical lowercase name (`resnet50`, `inception_v3`, `efficientnet_lite0`).
    pub const fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::ResNet101 => "resnet101",
            Arch::ResNet152 => "resnet152",
            Arch::InceptionV3 => "inception_v3",
            Arch::EfficientNetLite0 => "efficientnet_lite0",
            Arch::Synthetic => "synthetic",
        }
    }

    /// Side of the square network input after preprocessing (224, 299; 32 for synthetic).
    pub const fn input_size(self) -> usize {
        match self {
            Arch::InceptionV3 => 299,
            Arch::Synthetic => 32,
            _ => 224,
        }
    }

    /// Approximate cost of one image at [`Arch::input_size`], in GFLOPs as
    /// torchvision reports them (multiply-accumulates counted once).
    /// Meant only to seed a scheduler's cost estimates; 0 for
    /// [`Arch::Synthetic`], whose cost is declared per model.
    pub const fn gflops(self) -> f64 {
        match self {
            Arch::ResNet18 => 1.81,
            Arch::ResNet34 => 3.66,
            Arch::ResNet50 => 4.09,
            Arch::ResNet101 => 7.80,
            Arch::ResNet152 => 11.51,
            Arch::InceptionV3 => 5.71,
            Arch::EfficientNetLite0 => 0.39,
            Arch::Synthetic => 0.0,
        }
    }

    /// The eval preprocessing matching the architecture's reference weights.
    pub const fn preprocess(self) -> Preprocess {
        match self {
            Arch::InceptionV3 => inception_v3::PREPROCESS,
            Arch::EfficientNetLite0 => efficientnet_lite0::PREPROCESS,
            Arch::Synthetic => synthetic::PREPROCESS,
            _ => resnet::PREPROCESS,
        }
    }

    /// Every tensor (name, shape) the network reads from a weights file, in
    /// the order it reads them. Extra tensors in a file are ignored.
    pub fn tensor_specs(self) -> Result<Vec<TensorSpec>> {
        tensors::record_specs(|vb| model::build_net(self, vb, &LoadOptions::default()))
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;

    /// Accepts the canonical names, case-insensitively, with `-` for `_`.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Arch::ALL
            .into_iter()
            .chain([Arch::Synthetic])
            .find(|a| a.name() == wanted)
            .ok_or_else(|| ModelError::UnknownArch(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for arch in Arch::ALL {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
            assert_eq!(arch.to_string(), arch.name());
            let json = serde_json::to_string(&arch).unwrap();
            assert_eq!(json, format!("\"{}\"", arch.name()));
            assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), arch);
        }
        assert_eq!("Inception-V3".parse::<Arch>().unwrap(), Arch::InceptionV3);
        assert!(matches!(
            "vgg16".parse::<Arch>(),
            Err(ModelError::UnknownArch(_))
        ));
    }

    #[test]
    fn sizes_and_costs() {
        assert_eq!(Arch::InceptionV3.input_size(), 299);
        assert_eq!(Arch::ResNet50.input_size(), 224);
        assert_eq!(Arch::EfficientNetLite0.input_size(), 224);
        for arch in Arch::ALL {
            assert_eq!(arch.preprocess().crop as usize, arch.input_size());
            assert!(arch.gflops() > 0.0);
        }
        assert_eq!(Arch::Synthetic.preprocess().crop, 32);
        assert_eq!("synthetic".parse::<Arch>().unwrap(), Arch::Synthetic);
        assert!(Arch::ResNet152.gflops() > Arch::ResNet101.gflops());
    }
}
