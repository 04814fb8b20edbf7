//! ResNet-18/34/50/101/152 — thin glue over `candle_transformers::models::resnet`.
//!
//! candle's ResNet reads exactly torchvision's tensor names (`conv1`, `bn1`,
//! `layerN.M.{conv,bn}K`, `layerN.M.downsample.{0,1}`, `fc`) and matches
//! torchvision's v1.5 layout (stride on the 3×3 conv of a bottleneck), so this
//! file only picks the depth and states the eval preprocessing. It is not an
//! implementation of the network itself.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Func, VarBuilder};
use candle_transformers::models::resnet;

use super::labels::NUM_CLASSES;
use super::preprocess::Preprocess;

/// torchvision's eval transform for ResNet weights: resize 256, crop 224, mean/std.
pub const PREPROCESS: Preprocess = Preprocess::imagenet(256, 224);

/// ResNet depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    D18,
    D34,
    D50,
    D101,
    D152,
}

/// A loaded ResNet classifier (`(N, 3, H, W) -> (N, 1000)` logits).
pub struct ResNet {
    net: Func<'static>,
}

impl ResNet {
    /// Build the network from a `VarBuilder` rooted at the state dict's top.
    pub fn load(depth: Depth, vb: VarBuilder<'static>) -> Result<Self> {
        let net = match depth {
            Depth::D18 => resnet::resnet18(NUM_CLASSES, vb)?,
            Depth::D34 => resnet::resnet34(NUM_CLASSES, vb)?,
            Depth::D50 => resnet::resnet50(NUM_CLASSES, vb)?,
            Depth::D101 => resnet::resnet101(NUM_CLASSES, vb)?,
            Depth::D152 => resnet::resnet152(NUM_CLASSES, vb)?,
        };
        Ok(ResNet { net })
    }
}

impl Module for ResNet {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.net.forward(xs)
    }
}
