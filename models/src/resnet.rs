//! ResNet-18/34/50/101/152 (torchvision v1.5 layout), on the shared [`ConvBn`] layers.
//!
//! Tensor names are torchvision's (`conv1`, `bn1`, `layerN.M.{conv,bn}K`,
//! `layerN.M.downsample.{0,1}`, `fc`), the same set candle-transformers'
//! ResNet reads, and the layout is the same: stride on the 3×3 conv of a
//! bottleneck, a 1×1 strided projection shortcut where the shape changes,
//! BatchNorm eps 1e-5. The network is written here rather than taken from
//! candle-transformers so that BatchNorm is folded into the convolutions at
//! load time and the ReLU and the residual sum run in the convolution's
//! epilogue (one pass over memory instead of four).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::kernels::max_pool;
use super::labels::NUM_CLASSES;
use super::layers::{global_avg_pool, Activation, Classifier, ConvBn, Padding};
use super::model::Network;
use super::preprocess::Preprocess;

/// torchvision's eval transform for ResNet weights: resize 256, crop 224, mean/std.
pub const PREPROCESS: Preprocess = Preprocess::imagenet(256, 224);

const BN_EPS: f64 = 1e-5;

/// ResNet depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    D18,
    D34,
    D50,
    D101,
    D152,
}

impl Depth {
    /// Blocks per stage, and whether the blocks are bottlenecks.
    fn layout(self) -> ([usize; 4], bool) {
        match self {
            Depth::D18 => ([2, 2, 2, 2], false),
            Depth::D34 => ([3, 4, 6, 3], false),
            Depth::D50 => ([3, 4, 6, 3], true),
            Depth::D101 => ([3, 4, 23, 3], true),
            Depth::D152 => ([3, 8, 36, 3], true),
        }
    }
}

/// `conv<name>` + `bn<name>` of a block, square kernel, padding `k / 2`.
fn conv_bn(
    vb: &VarBuilder,
    conv: &str,
    bn: &str,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
) -> Result<ConvBn> {
    ConvBn::load(
        c_in,
        c_out,
        (k, k),
        stride,
        Padding::Fixed(k / 2, k / 2),
        false,
        BN_EPS,
        vb.pp(conv),
        vb.pp(bn),
    )
}

/// A basic block (two 3×3 convs) or a bottleneck (1×1, 3×3, 1×1 ×4), with its shortcut.
struct Block {
    /// All convolutions of the residual branch; every one but the last is followed by ReLU.
    convs: Vec<ConvBn>,
    /// The projection shortcut, when the shape changes.
    downsample: Option<ConvBn>,
}

impl Block {
    fn load(
        vb: VarBuilder,
        c_in: usize,
        width: usize,
        stride: usize,
        bottleneck: bool,
    ) -> Result<(Self, usize)> {
        let (convs, c_out) = if bottleneck {
            let c_out = 4 * width;
            let convs = vec![
                conv_bn(&vb, "conv1", "bn1", c_in, width, 1, 1)?,
                conv_bn(&vb, "conv2", "bn2", width, width, 3, stride)?,
                conv_bn(&vb, "conv3", "bn3", width, c_out, 1, 1)?,
            ];
            (convs, c_out)
        } else {
            let convs = vec![
                conv_bn(&vb, "conv1", "bn1", c_in, width, 3, stride)?,
                conv_bn(&vb, "conv2", "bn2", width, width, 3, 1)?,
            ];
            (convs, width)
        };
        let downsample = if stride != 1 || c_in != c_out {
            let vb = vb.pp("downsample");
            Some(ConvBn::load(
                c_in,
                c_out,
                (1, 1),
                stride,
                Padding::Fixed(0, 0),
                false,
                BN_EPS,
                vb.pp("0"),
                vb.pp("1"),
            )?)
        } else {
            None
        };
        Ok((Block { convs, downsample }, c_out))
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(xs)?,
            None => xs.clone(),
        };
        let (last, first) = self
            .convs
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("empty residual block".into()))?;
        let mut x = xs.clone();
        for conv in first {
            x = conv.forward_with(&x, None, Activation::Relu)?;
        }
        last.forward_with(&x, Some(&shortcut), Activation::Relu)
    }
}

/// Images per group in a bottleneck ResNet's late part. Its 1×1 layers on 14×14 planes
/// (1024 channels) ran 5–15 % slower on 32 images than on 8 — the activations, 25 MB,
/// outgrow the caches — while the 7×7 stage gains little from more images. Whole passes at
/// batch 32 in groups of 8: one thread ResNet-50 +1.4 to +2.5 %, ResNet-101 +2.1 to +3.4 %;
/// two threads within noise (−3.5 to +3.5 %); peak memory lower (the late activations of 8
/// images, not 32). ResNet-18's late layers are 3×3 and lost 2.9 % on two threads in
/// groups, so basic-block networks take the whole batch.
const LATE_GROUP: usize = 8;

/// A loaded ResNet classifier (`(N, 3, H, W) -> (N, 1000)` logits).
pub struct ResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    /// The first block of the third stage: [`Network::late`] starts there.
    late_from: usize,
    /// Bottleneck blocks (ResNet-50 and deeper), whose late part takes groups of images.
    bottleneck: bool,
    fc: Classifier,
}

impl ResNet {
    /// Build the network from a `VarBuilder` rooted at the state dict's top.
    pub fn load(depth: Depth, vb: VarBuilder<'static>) -> Result<Self> {
        let (counts, bottleneck) = depth.layout();
        let stem = ConvBn::load(
            3,
            64,
            (7, 7),
            2,
            Padding::Fixed(3, 3),
            false,
            BN_EPS,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut blocks = Vec::new();
        let mut late_from = 0;
        let mut c_in = 64;
        for (stage, &count) in counts.iter().enumerate() {
            if stage == 2 {
                late_from = blocks.len();
            }
            let width = 64 << stage;
            let vb_stage = vb.pp(format!("layer{}", stage + 1));
            for index in 0..count {
                let stride = if index == 0 && stage > 0 { 2 } else { 1 };
                let (block, c_out) =
                    Block::load(vb_stage.pp(index), c_in, width, stride, bottleneck)?;
                blocks.push(block);
                c_in = c_out;
            }
        }
        let fc = Classifier::load(c_in, NUM_CLASSES, vb.pp("fc"))?;
        Ok(ResNet {
            stem,
            blocks,
            late_from,
            bottleneck,
            fc,
        })
    }
}

impl Network for ResNet {
    /// The stem and the first two stages (56×56 and 28×28 for a 224×224 input).
    fn early(&self, xs: &Tensor) -> Result<Tensor> {
        let x = self.stem.forward_with(xs, None, Activation::Relu)?;
        let x = max_pool(&x, 3, 2, 1)?;
        self.blocks[..self.late_from]
            .iter()
            .try_fold(x, |x, block| block.forward(&x))
    }

    /// The last two stages, the pooling and the classifier.
    fn late(&self, xs: &Tensor) -> Result<Tensor> {
        let x = self.blocks[self.late_from..]
            .iter()
            .try_fold(xs.clone(), |x, block| block.forward(&x))?;
        global_avg_pool(&x)?.apply(&self.fc)
    }

    /// Bottleneck networks: [`LATE_GROUP`] images at a time; basic-block ones (ResNet-18
    /// and 34) the whole batch.
    fn late_group(&self) -> Option<usize> {
        self.bottleneck.then_some(LATE_GROUP)
    }
}
