//! Shared building blocks for the hand-written networks (Inception V3, EfficientNet-Lite0).
//!
//! * [`ConvBn`]: a bias-free convolution followed by an inference-mode
//!   BatchNorm, folded at load time into one convolution with bias, with
//!   arbitrary rectangular kernels, per-side zero padding (fixed or TensorFlow
//!   "SAME") and an optional depthwise mode.
//! * Pooling helpers with PyTorch semantics.
//!
//! candle's grouped convolution runs one convolution per group, which is far
//! too slow for depthwise layers with ~1000 groups, so depthwise convolutions
//! here are computed as a sum of k×k shifted, per-channel-scaled views.
//! Nothing here knows tensor names beyond `<prefix>.weight` and the BatchNorm
//! quartet; the architecture files own the layouts.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

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

/// Convolution (no bias) + BatchNorm in eval mode, folded into one conv with bias.
#[derive(Debug, Clone)]
pub struct ConvBn {
    /// Folded weight `(out, in/groups, kh, kw)`.
    weight: Tensor,
    /// Folded bias, shaped `(1, out, 1, 1)`.
    bias: Tensor,
    /// For depthwise convs: the kh·kw per-channel weights, each `(1, C, 1, 1)`.
    taps: Option<Vec<Tensor>>,
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
        let in_per_group = if depthwise { 1 } else { c_in };
        let w = conv.get((c_out, in_per_group, kernel.0, kernel.1), "weight")?;
        let gamma = bn.get(c_out, "weight")?;
        let beta = bn.get(c_out, "bias")?;
        let mean = bn.get(c_out, "running_mean")?;
        let var = bn.get(c_out, "running_var")?;
        let scale = gamma.div(&(var + eps)?.sqrt()?)?;
        let weight = w.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = beta.sub(&mean.mul(&scale)?)?.reshape((1, c_out, 1, 1))?;
        let taps = if depthwise {
            let mut taps = Vec::with_capacity(kernel.0 * kernel.1);
            for i in 0..kernel.0 {
                for j in 0..kernel.1 {
                    let tap = weight
                        .narrow(2, i, 1)?
                        .narrow(3, j, 1)?
                        .reshape((1, c_out, 1, 1))?;
                    taps.push(tap);
                }
            }
            Some(taps)
        } else {
            None
        };
        Ok(ConvBn {
            weight,
            bias,
            taps,
            kernel,
            stride,
            padding,
        })
    }

    /// Zero-pad `xs` as this layer's padding asks; returns the padding left for
    /// candle's symmetric `conv2d` argument.
    fn pad(&self, xs: &Tensor) -> Result<(Tensor, usize)> {
        let (h, w) = (xs.dim(D::Minus2)?, xs.dim(D::Minus1)?);
        let ((top, bottom), (left, right)) = match self.padding {
            Padding::Fixed(ph, pw) => ((ph, ph), (pw, pw)),
            Padding::Same => (
                same_padding(h, self.kernel.0, self.stride),
                same_padding(w, self.kernel.1, self.stride),
            ),
        };
        if self.taps.is_none() && top == bottom && left == right && top == left {
            return Ok((xs.clone(), top));
        }
        let mut xs = xs.clone();
        if top + bottom > 0 {
            xs = xs.pad_with_zeros(D::Minus2, top, bottom)?;
        }
        if left + right > 0 {
            xs = xs.pad_with_zeros(D::Minus1, left, right)?;
        }
        Ok((xs, 0))
    }

    fn depthwise(&self, xs: &Tensor, taps: &[Tensor]) -> Result<Tensor> {
        let (kh, kw) = self.kernel;
        let s = self.stride;
        let (_, _, h, w) = xs.dims4()?;
        if h < kh || w < kw {
            candle_core::bail!("depthwise input {h}x{w} smaller than kernel {kh}x{kw}");
        }
        let (oh, ow) = ((h - kh) / s + 1, (w - kw) / s + 1);
        // Split the padded input into stride×stride phases so that every tap
        // is a plain (contiguous-stride) window of one phase.
        let phases = if s == 1 {
            vec![xs.clone()]
        } else {
            let (hp, wp) = (h.div_ceil(s) * s, w.div_ceil(s) * s);
            let padded =
                xs.pad_with_zeros(D::Minus2, 0, hp - h)?
                    .pad_with_zeros(D::Minus1, 0, wp - w)?;
            let (n, c) = (padded.dim(0)?, padded.dim(1)?);
            let split = padded.reshape((n, c, hp / s, s, wp / s, s))?;
            let mut phases = Vec::with_capacity(s * s);
            for a in 0..s {
                for b in 0..s {
                    phases.push(split.narrow(3, a, 1)?.narrow(5, b, 1)?.reshape((
                        n,
                        c,
                        hp / s,
                        wp / s,
                    ))?);
                }
            }
            phases
        };
        let mut acc: Option<Tensor> = None;
        for i in 0..kh {
            for j in 0..kw {
                let phase = &phases[(i % s) * s + (j % s)];
                // A contiguous copy first: candle's broadcast multiply is only
                // fast when the non-broadcast operand is contiguous.
                let window = phase
                    .narrow(2, i / s, oh)?
                    .narrow(3, j / s, ow)?
                    .contiguous()?;
                let term = window.broadcast_mul(&taps[i * kw + j])?;
                acc = Some(match acc {
                    None => term,
                    Some(a) => (a + term)?,
                });
            }
        }
        match acc {
            Some(a) => a.broadcast_add(&self.bias),
            None => candle_core::bail!("depthwise conv with an empty kernel"),
        }
    }
}

pub static PROF: std::sync::Mutex<Vec<(String, f64, usize)>> = std::sync::Mutex::new(Vec::new());
pub fn prof<R>(name: &str, f: impl FnOnce() -> R) -> R {
    let t = std::time::Instant::now();
    let r = f();
    let dt = t.elapsed().as_secs_f64();
    let mut p = PROF.lock().unwrap();
    if let Some(e) = p.iter_mut().find(|e| e.0 == name) {
        e.1 += dt;
        e.2 += 1;
    } else {
        p.push((name.to_string(), dt, 1));
    }
    r
}
impl Module for ConvBn {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (xs, pad) = prof("pad", || self.pad(xs))?;
        let (c_out, c_in, kh, _kw) = self.weight.dims4()?;
        match &self.taps {
            Some(taps) => prof(&format!("dw k{kh} s{}", self.stride), || {
                self.depthwise(&xs, taps)
            }),
            None => {
                let y = prof(
                    &format!(
                        "conv k{kh} s{} {}",
                        self.stride,
                        if kh == 1 {
                            format!("{c_in}->{c_out}")
                        } else {
                            String::new()
                        }
                    ),
                    || xs.conv2d(&self.weight, pad, self.stride, 1, 1),
                )?;
                prof("bias", || y.broadcast_add(&self.bias))
            }
        }
    }
}

/// PyTorch `F.avg_pool2d(x, 3, stride=1, padding=1)` (zero padding counted).
pub fn avg_pool_3x3_same(xs: &Tensor) -> Result<Tensor> {
    xs.pad_with_zeros(D::Minus2, 1, 1)?
        .pad_with_zeros(D::Minus1, 1, 1)?
        .avg_pool2d_with_stride(3, 1)
}

/// Global average pooling `(N, C, H, W) -> (N, C)`.
pub fn global_avg_pool(xs: &Tensor) -> Result<Tensor> {
    xs.flatten_from(2)?.mean(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 5, 2), (1, 2));
        assert_eq!(same_padding(56, 3, 1), (1, 1));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
        assert_eq!(same_padding(225, 3, 2), (1, 1));
    }

    /// The shifted-window depthwise path must agree with candle's grouped conv.
    #[test]
    fn depthwise_matches_grouped_conv() -> Result<()> {
        let dev = Device::Cpu;
        let c = 3;
        for (k, s, hw) in [(3, 1, 7), (3, 2, 8), (5, 2, 9), (5, 1, 6)] {
            let w = Tensor::arange(0f32, (c * k * k) as f32, &dev)?
                .affine(0.01, -0.1)?
                .reshape((c, 1, k, k))?;
            let mut map = HashMap::new();
            map.insert("c.weight".to_string(), w.clone());
            map.insert("b.weight".to_string(), Tensor::ones(c, DType::F32, &dev)?);
            map.insert("b.bias".to_string(), Tensor::zeros(c, DType::F32, &dev)?);
            map.insert(
                "b.running_mean".to_string(),
                Tensor::zeros(c, DType::F32, &dev)?,
            );
            map.insert(
                "b.running_var".to_string(),
                Tensor::ones(c, DType::F32, &dev)?,
            );
            let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
            let layer = ConvBn::load(
                c,
                c,
                (k, k),
                s,
                Padding::Same,
                true,
                0.0,
                vb.pp("c"),
                vb.pp("b"),
            )?;
            let x = Tensor::arange(0f32, (2 * c * hw * hw) as f32, &dev)?
                .affine(0.003, -0.5)?
                .sin()?
                .reshape((2, c, hw, hw))?;
            let got = layer.forward(&x)?;
            let (pt, pb) = same_padding(hw, k, s);
            let xp = x
                .pad_with_zeros(D::Minus2, pt, pb)?
                .pad_with_zeros(D::Minus1, pt, pb)?;
            let want = xp.conv2d(&w, 0, s, 1, c)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "k={k} s={s}: diff {diff}");
        }
        Ok(())
    }
}
