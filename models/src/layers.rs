//! Shared building blocks for the hand-written networks (ResNet, Inception V3,
//! EfficientNet-Lite0).
//!
//! * [`ConvBn`]: a bias-free convolution followed by an inference-mode
//!   BatchNorm, folded at load time into one convolution with bias, with
//!   arbitrary rectangular kernels, per-side zero padding (fixed or TensorFlow
//!   "SAME") and an optional depthwise mode. [`ConvBn::forward_with`] also
//!   fuses the activation and a residual sum into the convolution's epilogue.
//! * [`Classifier`]: the fully connected layer at a network's end.
//! * Pooling helpers with PyTorch semantics.
//!
//! The arithmetic runs in [`super::kernels`]: depthwise convolutions in a
//! direct kernel; the others, on CPUs with AVX-512F, in the packed kernel (the
//! folded weights packed once here, at load, with the bias, residual and
//! activation fused into the kernel), elsewhere as the folded weight matrix times
//! each image's im2col matrix (skipped for 1×1 stride-1 layers, whose input
//! already is the matrix) in one gemm call, then one in-place pass for bias,
//! residual and activation.
//! Nothing here knows tensor names beyond `<prefix>.weight` and the BatchNorm
//! quartet; the architecture files own the layouts.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use super::kernels::Activation;
use super::kernels::{
    avg_pool, bias_act, conv_gemm, depthwise_conv, packed_available, packed_conv, PackedFilter,
    Window,
};

/// Zero padding of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Fixed `(height, width)` padding on both sides (PyTorch `padding=(ph, pw)`).
    Fixed(usize, usize),
    /// TensorFlow "SAME": output `ceil(in / stride)`, the extra pixel of an odd
    /// total padding going to the bottom/right.
    Same,
}

/// Per-side `(before, after)` padding TF "SAME" needs along one axis.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// How a layer's folded weights are kept, chosen at load for the kernel that runs them.
#[derive(Debug, Clone)]
enum Weights {
    /// `(C, 1, kh, kw)` taps for the depthwise kernel.
    Depthwise(Tensor),
    /// The `(C_out, C_in·kh·kw)` matrix for im2col + gemm (CPUs without AVX-512).
    Matrix(Tensor),
    /// Packed once for the AVX-512 kernel, with the bias.
    Packed(PackedFilter),
}

/// Convolution (no bias) + BatchNorm in eval mode, folded into one conv with bias.
#[derive(Debug, Clone)]
pub struct ConvBn {
    weights: Weights,
    /// Folded bias, `(C_out)`.
    bias: Tensor,
    kernel: (usize, usize),
    stride: usize,
    padding: Padding,
}

impl ConvBn {
    /// Load `<conv>.weight` and `<bn>.{weight,bias,running_mean,running_var}`.
    ///
    /// `depthwise` makes a `groups == channels` convolution (`c_in == c_out`).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        stride: usize,
        padding: Padding,
        depthwise: bool,
        eps: f64,
        conv: VarBuilder,
        bn: VarBuilder,
    ) -> Result<Self> {
        let pack = packed_available();
        Self::load_for(
            (c_in, c_out),
            kernel,
            stride,
            padding,
            depthwise,
            eps,
            (conv, bn),
            pack,
        )
    }

    /// [`ConvBn::load`], packing the weights for the AVX-512 kernel when `pack` (and the
    /// layer is not depthwise).
    #[allow(clippy::too_many_arguments)]
    fn load_for(
        (c_in, c_out): (usize, usize),
        kernel: (usize, usize),
        stride: usize,
        padding: Padding,
        depthwise: bool,
        eps: f64,
        (conv, bn): (VarBuilder, VarBuilder),
        pack: bool,
    ) -> Result<Self> {
        if stride == 0 || kernel.0 == 0 || kernel.1 == 0 {
            candle_core::bail!("convolution with a zero stride or kernel size");
        }
        let in_per_group = if depthwise { 1 } else { c_in };
        let w = conv.get((c_out, in_per_group, kernel.0, kernel.1), "weight")?;
        let gamma = bn.get(c_out, "weight")?;
        let beta = bn.get(c_out, "bias")?;
        let mean = bn.get(c_out, "running_mean")?;
        let var = bn.get(c_out, "running_var")?;
        let scale = gamma.div(&(var + eps)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = beta.sub(&mean.mul(&scale)?)?.contiguous()?;
        let weights = if depthwise {
            Weights::Depthwise(weight.contiguous()?)
        } else {
            let matrix = weight
                .reshape((c_out, in_per_group * kernel.0 * kernel.1))?
                .contiguous()?;
            if pack {
                Weights::Packed(PackedFilter::new(
                    &matrix.flatten_all()?.to_vec1::<f32>()?,
                    &bias.to_vec1::<f32>()?,
                    c_out,
                    c_in,
                    kernel,
                )?)
            } else {
                Weights::Matrix(matrix)
            }
        };
        Ok(ConvBn {
            weights,
            bias,
            kernel,
            stride,
            padding,
        })
    }

    /// The window of this layer on an `h × w` input.
    fn window(&self, h: usize, w: usize) -> Result<Window> {
        let (kh, kw) = self.kernel;
        let s = self.stride;
        let ((top, bottom), (left, right)) = match self.padding {
            Padding::Fixed(ph, pw) => ((ph, ph), (pw, pw)),
            Padding::Same => (same_padding(h, kh, s), same_padding(w, kw, s)),
        };
        let (hp, wp) = (h + top + bottom, w + left + right);
        if hp < kh || wp < kw {
            candle_core::bail!("convolution input {h}x{w} smaller than its kernel {kh}x{kw}");
        }
        Ok(Window {
            kernel: self.kernel,
            stride: s,
            pad_before: (top, left),
            out: ((hp - kh) / s + 1, (wp - kw) / s + 1),
        })
    }

    /// `act(conv(xs) + bias + residual)`, the sum, residual and activation
    /// fused into the convolution. `residual` must have the output's shape.
    pub fn forward_with(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let win = self.window(h, w)?;
        match &self.weights {
            Weights::Depthwise(taps) => match residual {
                None => depthwise_conv(xs, taps, &self.bias, win, act),
                Some(r) => {
                    let zero = self.bias.zeros_like()?;
                    let y = depthwise_conv(xs, taps, &self.bias, win, Activation::Identity)?;
                    bias_act(y, &zero, Some(r), act)
                }
            },
            Weights::Matrix(matrix) => {
                let y = conv_gemm(xs, matrix, win)?;
                bias_act(y, &self.bias, residual, act)
            }
            Weights::Packed(filter) => packed_conv(xs, filter, win, residual, act),
        }
    }
}

impl Module for ConvBn {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, None, Activation::Identity)
    }
}

/// The fully connected classifier, `<prefix>.{weight,bias}` (`(classes, C)`, `(classes)`):
/// `(N, C) -> (N, classes)`. On CPUs with AVX-512F it runs as a 1×1 convolution on `(N, C,
/// 1, 1)` through the packed kernel, its weights packed once at load; candle's matmul (the
/// `gemm` crate), which it used before, repacked the whole matrix on every call — 3 % of an
/// EfficientNet-Lite0 pass at batch 1 — and read `/proc/cpuinfo` to choose its threads.
/// Elsewhere it is candle's `Linear`.
#[derive(Debug, Clone)]
pub struct Classifier(ClassifierWeights);

#[derive(Debug, Clone)]
enum ClassifierWeights {
    Packed(PackedFilter),
    Linear(candle_nn::Linear),
}

impl Classifier {
    /// Loads `c_in → classes` from `vb` (`weight`, `bias`).
    pub fn load(c_in: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        Self::load_for(c_in, classes, vb, packed_available())
    }

    /// [`Classifier::load`], packed for the AVX-512 kernel when `pack`.
    fn load_for(c_in: usize, classes: usize, vb: VarBuilder, pack: bool) -> Result<Self> {
        if !pack {
            return Ok(Classifier(ClassifierWeights::Linear(candle_nn::linear(
                c_in, classes, vb,
            )?)));
        }
        let weight = vb.get((classes, c_in), "weight")?;
        let bias = vb.get(classes, "bias")?;
        Ok(Classifier(ClassifierWeights::Packed(PackedFilter::new(
            &weight.flatten_all()?.to_vec1::<f32>()?,
            &bias.to_vec1::<f32>()?,
            classes,
            c_in,
            (1, 1),
        )?)))
    }
}

impl Module for Classifier {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.0 {
            ClassifierWeights::Linear(linear) => linear.forward(xs),
            ClassifierWeights::Packed(filter) => {
                let (n, c) = xs.dims2()?;
                let win = Window {
                    kernel: (1, 1),
                    stride: 1,
                    pad_before: (0, 0),
                    out: (1, 1),
                };
                let y = packed_conv(
                    &xs.reshape((n, c, 1, 1))?,
                    filter,
                    win,
                    None,
                    Activation::Identity,
                )?;
                y.reshape((n, filter.c_out()))
            }
        }
    }
}

/// PyTorch `F.avg_pool2d(x, 3, stride=1, padding=1)` (zero padding counted).
pub fn avg_pool_3x3_same(xs: &Tensor) -> Result<Tensor> {
    avg_pool(xs, 3, 1, 1)
}

/// Global average pooling `(N, C, H, W) -> (N, C)`.
pub fn global_avg_pool(xs: &Tensor) -> Result<Tensor> {
    xs.flatten_from(2)?.mean(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};
    use std::collections::HashMap;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 5, 2), (1, 2));
        assert_eq!(same_padding(56, 3, 1), (1, 1));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
        assert_eq!(same_padding(225, 3, 2), (1, 1));
    }

    /// A layer whose BatchNorm folds to `weight`, `bias` exactly (eps 0, var 1, mean 0).
    fn layer(
        w: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: Padding,
        depthwise: bool,
    ) -> Result<ConvBn> {
        layer_packed(w, bias, stride, padding, depthwise, packed_available())
    }

    /// [`layer`], its weights packed for the AVX-512 kernel or not.
    fn layer_packed(
        w: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: Padding,
        depthwise: bool,
        pack: bool,
    ) -> Result<ConvBn> {
        let dev = Device::Cpu;
        let (c_out, in_per_group, kh, kw) = w.dims4()?;
        let mut map = HashMap::new();
        map.insert("c.weight".to_string(), w.clone());
        map.insert(
            "b.weight".to_string(),
            Tensor::ones(c_out, DType::F32, &dev)?,
        );
        map.insert("b.bias".to_string(), bias.clone());
        map.insert(
            "b.running_mean".to_string(),
            Tensor::zeros(c_out, DType::F32, &dev)?,
        );
        map.insert(
            "b.running_var".to_string(),
            Tensor::ones(c_out, DType::F32, &dev)?,
        );
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        let c_in = if depthwise { c_out } else { in_per_group };
        ConvBn::load_for(
            (c_in, c_out),
            (kh, kw),
            stride,
            padding,
            depthwise,
            0.0,
            (vb.pp("c"), vb.pp("b")),
            pack,
        )
    }

    /// Deterministic, sign-varying values of shape `dims`.
    fn wave(dims: &[usize], step: f64, offset: f64) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)?
            .affine(step, offset)?
            .sin()?
            .reshape(dims)
    }

    /// candle's conv2d on an explicitly padded input, plus bias, residual, activation.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: Padding,
        groups: usize,
        residual: Option<&Tensor>,
        act: Activation,
    ) -> Result<Tensor> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let ((pt, pb), (pl, pr)) = match padding {
            Padding::Fixed(ph, pw) => ((ph, ph), (pw, pw)),
            Padding::Same => (same_padding(h, kh, stride), same_padding(wd, kw, stride)),
        };
        let xp = x
            .pad_with_zeros(D::Minus2, pt, pb)?
            .pad_with_zeros(D::Minus1, pl, pr)?;
        let mut y = xp
            .conv2d(w, 0, stride, 1, groups)?
            .broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
        if let Some(r) = residual {
            y = (y + r)?;
        }
        match act {
            Activation::Identity => Ok(y),
            Activation::Relu => y.relu(),
            Activation::Relu6 => y.clamp(0f32, 6f32),
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The direct depthwise kernel must agree with candle's grouped conv, for
    /// SAME and fixed padding, strides 1 and 2, odd/even and non-square inputs,
    /// batches, and with the bias and activations fused.
    #[test]
    fn depthwise_matches_grouped_conv() -> Result<()> {
        let c = 3;
        let cases = [
            (3, 1, (7, 7), 2, Padding::Same, Activation::Identity),
            (3, 2, (8, 8), 2, Padding::Same, Activation::Relu6),
            (5, 2, (9, 9), 2, Padding::Same, Activation::Relu6),
            (5, 1, (6, 6), 1, Padding::Same, Activation::Identity),
            (5, 2, (10, 7), 3, Padding::Same, Activation::Relu),
            (3, 2, (9, 6), 1, Padding::Fixed(1, 1), Activation::Identity),
            (3, 1, (5, 8), 2, Padding::Fixed(0, 0), Activation::Relu6),
            (5, 3, (11, 9), 2, Padding::Fixed(2, 1), Activation::Identity),
            (3, 1, (1, 1), 2, Padding::Same, Activation::Identity),
            (5, 1, (3, 2), 1, Padding::Fixed(2, 2), Activation::Relu),
            (5, 1, (1, 1), 1, Padding::Same, Activation::Relu6),
            (5, 2, (2, 1), 2, Padding::Same, Activation::Identity),
            (3, 3, (1, 2), 1, Padding::Fixed(1, 1), Activation::Identity),
            // Planes long enough for whole 64-output turns of the AVX-512 kernel, and tails.
            (3, 1, (19, 23), 2, Padding::Same, Activation::Relu6),
            (5, 2, (28, 17), 1, Padding::Same, Activation::Relu),
            (5, 1, (14, 14), 1, Padding::Same, Activation::Identity),
            (3, 2, (33, 30), 1, Padding::Fixed(1, 1), Activation::Relu6),
        ];
        for (k, s, (h, wd), n, padding, act) in cases {
            let w = wave(&[c, 1, k, k], 0.37, 0.1)?.affine(0.5, 0.0)?;
            let bias = wave(&[c], 1.3, 0.2)?;
            let l = layer(&w, &bias, s, padding, true)?;
            let x = wave(&[n, c, h, wd], 0.013, -0.5)?.affine(4.0, 0.0)?;
            let got = l.forward_with(&x, None, act)?;
            let want = reference(&x, &w, &bias, s, padding, c, None, act)?;
            let diff = max_diff(&got, &want)?;
            assert!(diff < 1e-5, "k={k} s={s} {h}x{wd} {padding:?}: diff {diff}");
        }
        Ok(())
    }

    /// im2col + matmul (and the pointwise shortcut) must agree with candle's
    /// conv2d, with the bias, a residual and the activations fused.
    #[test]
    fn convolution_matches_candle_conv2d() -> Result<()> {
        let cases = [
            ((1, 1), 1, (6, 5), 2, Padding::Fixed(0, 0)),
            ((1, 1), 2, (7, 6), 2, Padding::Fixed(0, 0)),
            ((3, 3), 1, (6, 6), 2, Padding::Fixed(1, 1)),
            ((3, 3), 2, (9, 8), 1, Padding::Fixed(1, 1)),
            ((3, 3), 2, (8, 9), 2, Padding::Same),
            ((3, 3), 1, (7, 7), 1, Padding::Fixed(0, 0)),
            ((7, 7), 2, (12, 11), 2, Padding::Fixed(3, 3)),
            ((1, 7), 1, (5, 9), 2, Padding::Fixed(0, 3)),
            ((7, 1), 1, (9, 5), 1, Padding::Fixed(3, 0)),
            ((1, 3), 1, (4, 4), 2, Padding::Fixed(0, 1)),
            // Inputs smaller than the kernel's reach into the padding.
            ((7, 7), 1, (2, 2), 1, Padding::Fixed(3, 3)),
            ((7, 7), 2, (1, 3), 1, Padding::Fixed(3, 3)),
            ((1, 7), 1, (3, 1), 1, Padding::Fixed(0, 3)),
            ((3, 3), 1, (1, 1), 2, Padding::Fixed(1, 1)),
        ];
        let (c_in, c_out) = (5, 4);
        for ((kh, kw), s, (h, wd), n, padding) in cases {
            let w = wave(&[c_out, c_in, kh, kw], 0.71, 0.3)?.affine(0.3, 0.0)?;
            let bias = wave(&[c_out], 0.9, 0.4)?;
            let l = layer(&w, &bias, s, padding, false)?;
            let x = wave(&[n, c_in, h, wd], 0.029, 0.1)?.affine(2.0, 0.0)?;
            let plain = reference(&x, &w, &bias, s, padding, 1, None, Activation::Identity)?;
            let residual = wave(plain.dims(), 0.05, 1.0)?;
            for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                for r in [None, Some(&residual)] {
                    let got = l.forward_with(&x, r, act)?;
                    let want = reference(&x, &w, &bias, s, padding, 1, r, act)?;
                    let diff = max_diff(&got, &want)?;
                    assert!(
                        diff < 1e-5,
                        "{kh}x{kw} s={s} {h}x{wd} {padding:?} {act:?} residual={}: diff {diff}",
                        r.is_some()
                    );
                }
            }
        }
        Ok(())
    }

    /// The packed AVX-512 kernel agrees with im2col + gemm on the shapes that take its
    /// different paths: channel counts that are not a multiple of its 8-channel panels,
    /// more than one 256-row block of `k`, small images sharing panels (their sums moved
    /// into place afterwards), large images with partial tail panels, 1×1 layers read in
    /// place, layers with more channels than pixels (pixels packed once for all threads),
    /// stride-1 layers read from zero-padded planes (the grid path: rows' extra positions
    /// dropped, 16/32/48-wide tail panels, a tap's channels split in parts), strides and
    /// asymmetric padding — on pools of 1, 2 and 3 threads (which split the work
    /// differently), with a residual and an activation.
    #[test]
    fn packed_kernel_matches_im2col_gemm() -> Result<()> {
        if !packed_available() {
            eprintln!("no AVX-512F on this CPU: the packed kernel is never chosen here");
            return Ok(());
        }
        // (c_in, c_out, kernel, stride, (h, w), images, padding)
        let cases = [
            (5, 20, (3, 3), 1, (9, 9), 3, Padding::Fixed(1, 1)),
            (70, 24, (3, 3), 1, (7, 7), 2, Padding::Same),
            (3, 16, (7, 7), 2, (40, 36), 1, Padding::Fixed(3, 3)),
            (300, 13, (1, 1), 1, (23, 23), 2, Padding::Fixed(0, 0)),
            (8, 600, (1, 1), 1, (5, 5), 1, Padding::Fixed(0, 0)),
            (8, 72, (3, 3), 1, (4, 4), 5, Padding::Fixed(1, 1)),
            (16, 32, (3, 3), 2, (30, 31), 2, Padding::Same),
            (4, 8, (1, 7), 1, (12, 50), 2, Padding::Fixed(0, 3)),
            (64, 64, (3, 3), 1, (56, 56), 1, Padding::Fixed(1, 1)),
            // Planes whose last panel has 1, 2 or 4 real pixels (through the tile buffer),
            // one with several blocks of k (1170 rows) and every tap of its last pixel inside
            // the input.
            (130, 24, (3, 3), 1, (9, 9), 1, Padding::Fixed(0, 0)),
            (6, 8, (3, 3), 1, (5, 10), 1, Padding::Fixed(1, 1)),
            (8, 16, (3, 3), 1, (14, 14), 1, Padding::Fixed(1, 1)),
            (12, 40, (1, 7), 1, (17, 17), 1, Padding::Fixed(0, 3)),
            // Stride-1 layers on the grid path (padded planes read in place): channels
            // split in parts of `k` per tap (600 > 512), a partial last channel panel, a
            // 5×5 kernel, rows unpadded and columns padded by 2 (an output wider than its
            // input), a 7×1 kernel, two large images.
            (600, 13, (3, 3), 1, (6, 6), 1, Padding::Fixed(1, 1)),
            (3, 21, (5, 5), 1, (20, 23), 1, Padding::Same),
            (9, 16, (3, 3), 1, (11, 12), 1, Padding::Fixed(0, 2)),
            (10, 24, (7, 1), 1, (17, 17), 1, Padding::Fixed(3, 0)),
            (7, 11, (3, 3), 1, (24, 24), 2, Padding::Fixed(1, 1)),
            // An even kernel: more padding on the right than on the left (the rows' pitch
            // set by the right side).
            (6, 16, (4, 4), 1, (20, 30), 1, Padding::Same),
            // Strided layers on the grid path (the input split into its stride phases): 3×3
            // stride 2 padded on both sides, padded on one side only ("same") on two
            // images, 1×1 stride 2, stride 3 with an uneven kernel and padding, channels
            // split in parts of `k` per tap.
            (24, 20, (3, 3), 2, (50, 47), 1, Padding::Fixed(1, 1)),
            (16, 16, (3, 3), 2, (49, 52), 2, Padding::Same),
            (20, 24, (1, 1), 2, (45, 44), 1, Padding::Fixed(0, 0)),
            (17, 8, (5, 4), 3, (40, 41), 1, Padding::Fixed(2, 1)),
            (600, 13, (3, 3), 2, (26, 26), 1, Padding::Fixed(1, 1)),
            // Planes of 9 and 6 pixels sharing panels: a vector across three images or more.
            (6, 20, (3, 3), 1, (3, 3), 4, Padding::Fixed(1, 1)),
            (12, 16, (1, 1), 1, (2, 3), 7, Padding::Fixed(0, 0)),
            // One image's small planes with the channels as the lanes (`small.rs`; the
            // 25-, 36-, 49- and 50-pixel cases above go there too): gathered with stride 2
            // (a 3×3 and a 1×1 layer), 70 channels (a partial channel tile), 64 channels on
            // three threads (the pixel tiles split between tasks).
            (16, 70, (3, 3), 2, (13, 13), 1, Padding::Fixed(1, 1)),
            (32, 64, (1, 1), 2, (14, 14), 1, Padding::Fixed(0, 0)),
        ];
        for (c_in, c_out, (kh, kw), s, (h, wd), n, padding) in cases {
            let w = wave(&[c_out, c_in, kh, kw], 0.71, 0.3)?.affine(0.3, 0.0)?;
            let bias = wave(&[c_out], 0.9, 0.4)?;
            let packed = layer_packed(&w, &bias, s, padding, false, true)?;
            assert!(matches!(packed.weights, Weights::Packed(_)));
            let matrix = layer_packed(&w, &bias, s, padding, false, false)?;
            let x = wave(&[n, c_in, h, wd], 0.029, 0.1)?.affine(2.0, 0.0)?;
            let want_plain = matrix.forward_with(&x, None, Activation::Identity)?;
            let residual = wave(want_plain.dims(), 0.05, 1.0)?;
            let want = matrix.forward_with(&x, Some(&residual), Activation::Relu)?;
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                let (plain, fused) = pool.install(|| -> Result<_> {
                    Ok((
                        packed.forward_with(&x, None, Activation::Identity)?,
                        packed.forward_with(&x, Some(&residual), Activation::Relu)?,
                    ))
                })?;
                for (got, want) in [(plain, &want_plain), (fused, &want)] {
                    let diff = max_diff(&got, want)?;
                    assert!(
                        diff < 2e-4,
                        "{c_in}->{c_out} {kh}x{kw} s={s} {h}x{wd} n={n} {padding:?} \
                         {threads} threads: diff {diff}"
                    );
                }
            }
        }
        Ok(())
    }

    /// The classifier gives candle's `Linear` logits whether it runs packed (one image: the
    /// channel-major tiles, 1000 classes a partial tile; several: images sharing a panel)
    /// or not, on one thread and on three.
    #[test]
    fn classifier_matches_candle_linear() -> Result<()> {
        let (c_in, classes) = (300, 1000);
        let mut map = HashMap::new();
        map.insert("fc.weight".to_string(), wave(&[classes, c_in], 0.37, 0.2)?);
        map.insert("fc.bias".to_string(), wave(&[classes], 0.9, 0.4)?);
        let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
        let linear = candle_nn::linear(c_in, classes, vb.pp("fc"))?;
        for pack in [false, packed_available()] {
            let fc = Classifier::load_for(c_in, classes, vb.pp("fc"), pack)?;
            for n in [1, 3] {
                let x = wave(&[n, c_in], 0.031, 0.1)?;
                let want = linear.forward(&x)?;
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("pool");
                    let got = pool.install(|| fc.forward(&x))?;
                    let diff = max_diff(&got, &want)?;
                    assert!(
                        diff < 2e-4,
                        "packed {pack}, {n} images, {threads} threads: {diff}"
                    );
                }
            }
        }
        Ok(())
    }

    /// The fused epilogue works in place: it must never touch the layer's input.
    #[test]
    fn forward_leaves_its_inputs_alone() -> Result<()> {
        let w = wave(&[2, 2, 1, 1], 0.3, 0.0)?;
        let bias = wave(&[2], 0.5, 0.1)?;
        let l = layer(&w, &bias, 1, Padding::Fixed(0, 0), false)?;
        let x = wave(&[1, 2, 3, 3], 0.2, 0.0)?;
        let r = wave(&[1, 2, 3, 3], 0.4, 0.0)?;
        let (x0, r0) = (x.copy()?, r.copy()?);
        let y = l.forward_with(&x, Some(&r), Activation::Relu)?;
        assert_eq!(max_diff(&x, &x0)?, 0.0);
        assert_eq!(max_diff(&r, &r0)?, 0.0);
        assert!(y.flatten_all()?.min(0)?.to_scalar::<f32>()? >= 0.0);
        Ok(())
    }

    #[test]
    fn kernels_refuse_other_dtypes() -> Result<()> {
        let w = wave(&[2, 1, 3, 3], 0.3, 0.0)?;
        let bias = wave(&[2], 0.5, 0.1)?;
        let l = layer(&w, &bias, 1, Padding::Same, true)?;
        let x = wave(&[1, 2, 4, 4], 0.2, 0.0)?.to_dtype(DType::F64)?;
        let err = l.forward(&x).unwrap_err().to_string();
        assert!(err.contains("f32"), "{err}");
        Ok(())
    }
}
