//! The network architectures a model can have: one serde enum, as the API, the Raft state and
//! the workers name them (`resnet50`, `inception_v3`, …). The networks themselves live in the
//! `idunno-models` crate; this is only their names and the facts the cluster schedules by.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
    /// The calibration model: a declared CPU cost per image, deterministic outputs. Not in
    /// [`Arch::ALL`], which lists the ImageNet networks.
    #[serde(rename = "synthetic")]
    Synthetic,
}

/// A name that is no architecture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown architecture {0:?} (expected one of resnet18, resnet34, resnet50, resnet101, resnet152, inception_v3, efficientnet_lite0, synthetic)")]
pub struct UnknownArch(pub String);

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

    /// Approximate cost of one image at [`Arch::input_size`], in GFLOPs as torchvision
    /// reports them (multiply-accumulates counted once). Meant only to seed a scheduler's
    /// cost estimates; 0 for [`Arch::Synthetic`], whose cost is declared per model.
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
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = UnknownArch;

    /// Accepts the canonical names, case-insensitively, with `-` for `_`.
    fn from_str(s: &str) -> Result<Self, UnknownArch> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Arch::ALL
            .into_iter()
            .chain([Arch::Synthetic])
            .find(|a| a.name() == wanted)
            .ok_or_else(|| UnknownArch(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_text_and_json() {
        for arch in Arch::ALL.into_iter().chain([Arch::Synthetic]) {
            assert_eq!(arch.name().parse::<Arch>().unwrap(), arch);
            assert_eq!(arch.to_string(), arch.name());
            let json = serde_json::to_string(&arch).unwrap();
            assert_eq!(json, format!("\"{}\"", arch.name()));
            assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), arch);
        }
        assert_eq!("Inception-V3".parse::<Arch>().unwrap(), Arch::InceptionV3);
        assert!("vgg16".parse::<Arch>().is_err());
        assert!(serde_json::from_str::<Arch>("\"vgg16\"").is_err());
    }

    #[test]
    fn sizes_and_costs() {
        assert_eq!(Arch::InceptionV3.input_size(), 299);
        assert_eq!(Arch::Synthetic.input_size(), 32);
        assert!(Arch::ALL.iter().all(|a| a.gflops() > 0.0));
        assert!(Arch::ResNet152.gflops() > Arch::ResNet101.gflops());
    }
}
