//! Hand-written CPU kernels (f32, NCHW) for the convolution layers in [`super::layers`].
//!
//! candle's own CPU paths are slow for what these networks do most:
//! * depthwise convolutions (candle runs one convolution per group; the
//!   earlier workaround, a sum of k×k shifted copies, made ~25 full passes
//!   over memory per layer) — [`depthwise_conv`] is a direct per-plane kernel:
//!   padding and stride resolved once per plane (the input split into its stride
//!   phases), then on AVX-512 CPUs every tap summed in registers for 64 outputs at a
//!   time with the bias and activation fused (elsewhere one vectorised pass per tap);
//! * dense convolutions — on CPUs with AVX-512F, [`packed_conv`]
//!   (`kernels/packed_conv.rs`): weights packed once at load, the im2col matrix
//!   never built (each thread gathers a cache-sized block of it), a register-tiled
//!   microkernel, bias, residual and activation applied while the output tile is in
//!   cache. Elsewhere the layout shuffles around candle's conv2d (NCHW→NHWC copies,
//!   a scalar strided im2col, a scattered output copy, separate passes for bias,
//!   residual and activation) are avoided by [`conv_gemm`], which builds each
//!   image's `(C·kh·kw, OH·OW)` matrix row by row in a buffer the thread reuses and
//!   has the `gemm` crate (what candle's matmul calls) multiply it straight into the
//!   output, then [`bias_act`] adds the bias and the residual and applies the
//!   activation in one in-place pass.
//!
//! Every kernel runs on the calling thread's rayon pool (the worker's compute pool),
//! f32 only; other dtypes and non-CPU devices are refused with an error.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, InplaceOp2, InplaceOp3, Layout, Result,
    Shape, Tensor,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;

mod packed_conv;
pub use packed_conv::{available as packed_available, PackedFilter};

/// Elementwise function applied after a convolution's bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    /// Apply to one value.
    #[inline(always)]
    fn scalar(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
        }
    }

    /// Apply to every element of `xs`, in place.
    #[inline]
    fn apply(self, xs: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::Relu => xs.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Relu6 => xs.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
        }
    }
}

/// Geometry of a 2-D convolution window: kernel, stride and the zero padding
/// before the first row/column (the padding after is implied by the output size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Kernel `(height, width)`.
    pub kernel: (usize, usize),
    /// Stride (same along both axes).
    pub stride: usize,
    /// Zero padding `(top, left)`.
    pub pad_before: (usize, usize),
    /// Output `(height, width)`.
    pub out: (usize, usize),
}

impl Window {
    /// The output columns `lo..hi` whose input column `ox·s + j − left` lies inside
    /// `0..w`, and that input column for `ox = lo`.
    #[inline]
    fn valid_cols(&self, j: usize, w: usize) -> (usize, usize, usize) {
        valid_range(j, self.stride, self.pad_before.1, w, self.out.1)
    }

    /// Refuses a zero kernel or stride.
    fn check(&self, op: &str) -> Result<()> {
        if self.kernel.0 == 0 || self.kernel.1 == 0 || self.stride == 0 {
            bail!("{op}: zero kernel size or stride in {self:?}")
        }
        Ok(())
    }

    /// Input row of output row `oy` and kernel row `i`, if inside `0..h`.
    #[inline]
    fn input_row(&self, oy: usize, i: usize, h: usize) -> Option<usize> {
        (oy * self.stride + i)
            .checked_sub(self.pad_before.0)
            .filter(|&iy| iy < h)
    }
}

/// The f32 data of a contiguous CPU tensor.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!(
            "{op}: only f32 tensors are supported, got {:?}",
            storage.dtype()
        )
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: the tensor must be contiguous"),
    }
}

/// Mutable f32 data of a contiguous CPU tensor.
fn f32_slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    let dtype = storage.dtype();
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: only f32 tensors are supported, got {dtype:?}")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => bail!("{op}: the tensor must be contiguous"),
    }
}

/// Depthwise convolution (`groups == channels`) with bias and activation.
///
/// Per `(n, c)` plane: the zero-padded input is split into `stride × stride`
/// phases (`P_ab[r][c] = padded[s·r + a][s·c + b]`), after which every tap
/// `(i, j)` is one long contiguous multiply-add of a phase into a block of
/// output rows kept `Cq` wide (the few extra columns are computed and dropped),
/// so the inner loop vectorises whatever the plane width. Blocks stay in L1. With
/// AVX-512 the taps are not separate passes: 64 outputs at a time get every tap's
/// product in registers, then the activation, then one store.
struct Depthwise {
    window: Window,
    act: Activation,
}

/// One task's scratch: the phases of the padded input plane and an output block.
#[derive(Default)]
struct DepthwiseScratch {
    phases: Vec<f32>,
    block: Vec<f32>,
    /// Where each tap reads in `phases` for the block's first output (same for every plane
    /// of a layer: computed on a task's first plane).
    offsets: Vec<usize>,
}

/// Output floats per accumulator block (32 KiB).
const DEPTHWISE_BLOCK: usize = 8 * 1024;

/// `a + w·x`, fused when the caller was compiled with FMA.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, w: f32, x: f32) -> f32 {
    if FMA {
        w.mul_add(x, a)
    } else {
        a + w * x
    }
}

impl Depthwise {
    /// One output plane: `dst` (OH·OW) from the input plane `src` (H·W).
    #[inline(always)]
    fn plane_impl<const FMA: bool>(
        &self,
        src: &[f32],
        (h, w): (usize, usize),
        taps: &[f32],
        bias: f32,
        dst: &mut [MaybeUninit<f32>],
        scratch: &mut DepthwiseScratch,
    ) {
        let Window {
            kernel: (kh, kw),
            stride: s,
            pad_before: (top, left),
            out: (oh, ow),
        } = self.window;
        let rq = oh + (kh - 1) / s;
        let cq = ow + (kw - 1) / s;
        // The last tap of the last row reads (kw − 1) / s floats past rq·cq.
        let phase_len = rq * cq + (kw - 1) / s;
        let DepthwiseScratch {
            phases,
            block,
            offsets,
        } = scratch;
        phases.resize(s * s * phase_len, 0.0);
        for (ab, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
            let (a, b) = (ab / s, ab % s);
            let (lo, hi, ix) = valid_range(b, s, left, w, cq);
            for (r, row) in phase.chunks_exact_mut(cq).enumerate() {
                let Some(iy) = (s * r + a).checked_sub(top).filter(|&iy| iy < h) else {
                    row.fill(0.0);
                    continue;
                };
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
                let src_row = &src[iy * w + ix..(iy + 1) * w];
                if s == 1 {
                    row[lo..hi].copy_from_slice(&src_row[..hi - lo]);
                } else if s == 2 {
                    packed_conv::copy_stride2(&mut row[lo..hi], src_row);
                } else {
                    for (o, x) in row[lo..hi].iter_mut().zip(src_row.iter().step_by(s)) {
                        *o = *x;
                    }
                }
            }
            phase[rq * cq..].fill(0.0);
        }
        // Where tap (i, j) reads, in `phases`, for output 0 of the plane: output `t` of a
        // block of rows starting at row `oy0` reads `offsets[tap] + oy0·cq + t`.
        if offsets.len() != kh * kw {
            offsets.clear();
            offsets.extend((0..kh * kw).map(|k| {
                let (i, j) = (k / kw, k % kw);
                ((i % s) * s + j % s) * phase_len + (i / s) * cq + j / s
            }));
        }
        let rows_per_block = (DEPTHWISE_BLOCK / cq).max(1);
        block.resize(rows_per_block * cq, 0.0);
        let mut oy0 = 0;
        while oy0 < oh {
            let rows = rows_per_block.min(oh - oy0);
            let acc = &mut block[..rows * cq];
            let fused = self.taps_fused(acc, phases, offsets, oy0 * cq, taps, bias);
            if !fused {
                acc.fill(bias);
                for (&tap, &offset) in taps.iter().zip(offsets.iter()) {
                    let from = offset + oy0 * cq;
                    for (o, x) in acc.iter_mut().zip(&phases[from..from + rows * cq]) {
                        *o = madd::<FMA>(*o, tap, *x);
                    }
                }
            }
            for (r, out) in dst[oy0 * ow..(oy0 + rows) * ow]
                .chunks_exact_mut(ow)
                .enumerate()
            {
                let act = if fused {
                    Activation::Identity
                } else {
                    self.act
                };
                for (o, x) in out.iter_mut().zip(&acc[r * cq..r * cq + ow]) {
                    o.write(act.scalar(*x));
                }
            }
            oy0 += rows;
        }
    }

    /// The block's outputs with every tap summed in registers and the activation applied
    /// (AVX-512: one load and one FMA per tap and 16 outputs, one store per 16 outputs, where
    /// the tap-by-tap passes load and store the block once per tap). Same sums in the same
    /// order as those passes, so the same results. `false` (nothing written) where the CPU
    /// has no AVX-512F.
    #[inline(always)]
    fn taps_fused(
        &self,
        acc: &mut [f32],
        phases: &[f32],
        offsets: &[usize],
        base: usize,
        taps: &[f32],
        bias: f32,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if packed_conv::available() {
            let reach = offsets.iter().max().map_or(0, |&o| o + base + acc.len());
            if reach <= phases.len() && taps.len() == offsets.len() {
                // SAFETY: the CPU has AVX-512F (checked above), every tap's reads
                // `offset + base + 0..acc.len()` lie within `phases` (checked above), and
                // every write lies within `acc`.
                unsafe { depthwise_taps_avx512(acc, phases, offsets, base, taps, bias, self.act) };
                return true;
            }
        }
        let _ = (acc, phases, offsets, base, taps, bias);
        false
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_avx2(
        &self,
        src: &[f32],
        hw: (usize, usize),
        taps: &[f32],
        bias: f32,
        dst: &mut [MaybeUninit<f32>],
        scratch: &mut DepthwiseScratch,
    ) {
        self.plane_impl::<true>(src, hw, taps, bias, dst, scratch)
    }

    fn plane(
        &self,
        src: &[f32],
        hw: (usize, usize),
        taps: &[f32],
        bias: f32,
        dst: &mut [MaybeUninit<f32>],
        scratch: &mut DepthwiseScratch,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe { self.plane_avx2(src, hw, taps, bias, dst, scratch) };
        }
        self.plane_impl::<false>(src, hw, taps, bias, dst, scratch)
    }
}

/// `acc[t] = act(bias + Σ_k taps[k] · phases[offsets[k] + base + t])` for every `t`, the
/// terms added in `k` order, 64 outputs per turn (16 in the tail, masked).
///
/// # Safety
/// The CPU must have AVX-512F; `taps.len() == offsets.len()`, and
/// `offsets[k] + base + acc.len() <= phases.len()` for every `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_taps_avx512(
    acc: &mut [f32],
    phases: &[f32],
    offsets: &[usize],
    base: usize,
    taps: &[f32],
    bias: f32,
    act: Activation,
) {
    use std::arch::x86_64::*;
    let n = acc.len();
    let out = acc.as_mut_ptr();
    let src = phases.as_ptr().wrapping_add(base);
    let activate = |v| packed_conv::activate(act, v);
    let b = _mm512_set1_ps(bias);
    let mut t = 0;
    while t + 64 <= n {
        let (mut a0, mut a1, mut a2, mut a3) = (b, b, b, b);
        for (&w, &offset) in taps.iter().zip(offsets) {
            let w = _mm512_set1_ps(w);
            let p = src.add(offset + t);
            a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p), a0);
            a1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p.add(16)), a1);
            a2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p.add(32)), a2);
            a3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(p.add(48)), a3);
        }
        _mm512_storeu_ps(out.add(t), activate(a0));
        _mm512_storeu_ps(out.add(t + 16), activate(a1));
        _mm512_storeu_ps(out.add(t + 32), activate(a2));
        _mm512_storeu_ps(out.add(t + 48), activate(a3));
        t += 64;
    }
    while t < n {
        let mask = packed_conv::lanes(n - t);
        let mut a = b;
        for (&w, &offset) in taps.iter().zip(offsets) {
            let x = _mm512_maskz_loadu_ps(mask, src.add(offset + t));
            a = _mm512_fmadd_ps(_mm512_set1_ps(w), x, a);
        }
        _mm512_mask_storeu_ps(out.add(t), mask, activate(a));
        t += 16;
    }
}

/// Whether the CPU has AVX2 and FMA (the depthwise kernel then uses them).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Along one axis, with input index `o·s + j − pad` for output index `o`: the
/// outputs `lo..hi` (within `0..n_out`) whose input lies inside `0..n_in`, and
/// the input index of `lo` (0 when the range is empty, so it always indexes
/// `0..=n_in`).
#[inline]
fn valid_range(j: usize, s: usize, pad: usize, n_in: usize, n_out: usize) -> (usize, usize, usize) {
    let lo = pad.saturating_sub(j).div_ceil(s).min(n_out);
    // o·s + j − pad ≤ n_in − 1  ⇔  o ≤ (n_in − 1 + pad − j) / s
    let hi = if n_in + pad > j {
        ((n_in - 1 + pad - j) / s + 1).min(n_out)
    } else {
        0
    };
    if hi > lo {
        // lo·s ≥ pad − j by construction, and lo·s + j − pad < n_in as lo < hi.
        (lo, hi, lo * s + j - pad)
    } else {
        (lo, lo, 0)
    }
}

impl CustomOp3 for Depthwise {
    fn name(&self) -> &'static str {
        "idunno-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        ws: &CpuStorage,
        ws_l: &Layout,
        bs: &CpuStorage,
        bs_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, c, h, w) = xs_l.shape().dims4()?;
        self.window.check(op)?;
        let (kh, kw) = self.window.kernel;
        let (oh, ow) = self.window.out;
        if ws_l.shape().dims() != [c, 1, kh, kw] || bs_l.shape().dims() != [c] {
            bail!(
                "{op}: weight {:?} / bias {:?} do not fit {c} channels and a {kh}x{kw} kernel",
                ws_l.shape(),
                bs_l.shape()
            )
        }
        let (xs, ws, bs) = (
            f32_slice(xs, xs_l, op)?,
            f32_slice(ws, ws_l, op)?,
            f32_slice(bs, bs_l, op)?,
        );
        let len = n * c * oh * ow;
        let mut out = Vec::with_capacity(len);
        if len > 0 {
            out.spare_capacity_mut()[..len]
                .par_chunks_mut(oh * ow)
                .enumerate()
                .for_each_init(DepthwiseScratch::default, |scratch, (plane, dst)| {
                    let ch = plane % c;
                    let src = &xs[plane * h * w..(plane + 1) * h * w];
                    let taps = &ws[ch * kh * kw..(ch + 1) * kh * kw];
                    self.plane(src, (h, w), taps, bs[ch], dst, scratch);
                });
        }
        // SAFETY: `plane` wrote every element of every plane (each output row in full), and
        // the planes cover `0..len`.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// `act(depthwise_conv(xs, weight) + bias)`: `xs (N, C, H, W)`, `weight (C, 1, kh, kw)`,
/// `bias (C)`, output `(N, C, OH, OW)` as `window` says.
pub fn depthwise_conv(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    window: Window,
    act: Activation,
) -> Result<Tensor> {
    xs.contiguous()?.apply_op3_no_bwd(
        &weight.contiguous()?,
        &bias.contiguous()?,
        &Depthwise { window, act },
    )
}

/// A dense convolution without bias: per image, the folded weight matrix `(C_out, C·kh·kw)`
/// times that image's im2col matrix `(C·kh·kw, OH·OW)` (rows ordered like the weight's
/// `(C, kh, kw)` columns), one gemm call writing straight into the output. A 1×1 stride-1
/// unpadded layer skips im2col: its input already is the matrix.
///
/// The im2col matrix is the largest buffer of a forward pass (25 MB for one 299×299 image
/// in Inception's second layer), and it lives only for one gemm call. It is built in a
/// buffer each compute thread keeps for the next call ([`SCRATCH`]) rather than a fresh
/// allocation: a fresh one of that size comes from the kernel as new zero pages, so
/// every layer paid a page fault per 4 KiB, and how often depended on the allocator's
/// history (the same job ran 10–20 % slower inside a worker than in a bare loop). The
/// output is written once by gemm and is neither zeroed nor copied.
struct ConvGemm {
    window: Window,
}

thread_local! {
    /// The im2col buffer of this thread's last convolution (kept at its largest size).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Takes this thread's im2col buffer, leaving an empty one: a convolution that runs on this
/// thread while this one waits inside gemm (rayon steals work) allocates its own.
fn take_scratch() -> Vec<f32> {
    SCRATCH.with(|s| s.take())
}

/// Gives an im2col buffer back to this thread; the larger of it and any buffer a nested
/// convolution left there is kept.
fn return_scratch(buf: Vec<f32>) {
    SCRATCH.with(|s| {
        let other = s.take();
        s.set(if other.capacity() > buf.capacity() {
            other
        } else {
            buf
        });
    });
}

impl Window {
    /// Whether this window is a 1×1, stride-1, unpadded one over an `h × w` input.
    pub(crate) fn is_pointwise(&self, h: usize, w: usize) -> bool {
        self.kernel == (1, 1) && self.stride == 1 && self.pad_before == (0, 0) && self.out == (h, w)
    }
}

/// Writes the im2col matrix of one image `src (C, H, W)` into `dst` (`C·kh·kw·OH·OW`
/// elements, every one written: padding as zeros), one task per input plane.
fn fill_im2col(src: &[f32], (h, w): (usize, usize), win: Window, dst: &mut [MaybeUninit<f32>]) {
    let (kh, kw) = win.kernel;
    let (oh, ow) = win.out;
    let (s, p) = (win.stride, oh * ow);
    dst.par_chunks_mut(kh * kw * p)
        .zip(src.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (tap, rows) in dst.chunks_exact_mut(p).enumerate() {
                let (i, j) = (tap / kw, tap % kw);
                let (lo, hi, ix) = win.valid_cols(j, w);
                for (oy, row) in rows.chunks_exact_mut(ow).enumerate() {
                    let zero = |r: &mut [MaybeUninit<f32>]| {
                        r.iter_mut().for_each(|o| {
                            o.write(0.0);
                        })
                    };
                    let Some(iy) = win.input_row(oy, i, h) else {
                        zero(row);
                        continue;
                    };
                    zero(&mut row[..lo]);
                    zero(&mut row[hi..]);
                    let src_row = &src[iy * w + ix..(iy + 1) * w];
                    let row = &mut row[lo..hi];
                    if s == 1 {
                        for (o, x) in row.iter_mut().zip(&src_row[..hi - lo]) {
                            o.write(*x);
                        }
                    } else {
                        for (o, x) in row.iter_mut().zip(src_row.iter().step_by(s)) {
                            o.write(*x);
                        }
                    }
                }
            }
        });
}

impl CustomOp2 for ConvGemm {
    fn name(&self) -> &'static str {
        "idunno-conv-gemm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        ws: &CpuStorage,
        ws_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (n, c, h, w) = xs_l.shape().dims4()?;
        let (c_out, k) = ws_l.shape().dims2()?;
        let win = self.window;
        win.check(op)?;
        let (kh, kw) = win.kernel;
        let (oh, ow) = win.out;
        let p = oh * ow;
        if k != c * kh * kw {
            bail!("{op}: a ({c_out}, {k}) weight does not fit {c} channels and a {kh}x{kw} kernel")
        }
        let (xs, ws) = (f32_slice(xs, xs_l, op)?, f32_slice(ws, ws_l, op)?);
        let len = n * c_out * p;
        // No input pixels (or no input channels): every window sees only padding.
        if len == 0 || k == 0 || h * w == 0 {
            return Ok((
                CpuStorage::F32(vec![0.0; len]),
                Shape::from((n, c_out, oh, ow)),
            ));
        }
        let pointwise = win.is_pointwise(h, w);
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let mut scratch = if pointwise {
            Vec::new()
        } else {
            take_scratch()
        };
        for (image, dst) in out.spare_capacity_mut()[..len]
            .chunks_exact_mut(c_out * p)
            .enumerate()
        {
            let src = &xs[image * c * h * w..(image + 1) * c * h * w];
            let cols: &[f32] = if pointwise {
                src
            } else {
                scratch.clear();
                scratch.reserve(k * p);
                fill_im2col(src, (h, w), win, &mut scratch.spare_capacity_mut()[..k * p]);
                // SAFETY: `fill_im2col` wrote all `k·p` elements.
                unsafe { scratch.set_len(k * p) };
                &scratch
            };
            // SAFETY: row-major `dst (c_out × p)`, `ws (c_out × k)` and `cols (k × p)`, each
            // exactly that long; with `read_dst = false` gemm only writes `dst`, every
            // element of it.
            unsafe {
                gemm::gemm(
                    c_out,
                    p,
                    k,
                    dst.as_mut_ptr().cast::<f32>(),
                    1,
                    p as isize,
                    false,
                    ws.as_ptr(),
                    1,
                    k as isize,
                    cols.as_ptr(),
                    1,
                    p as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        if !pointwise {
            return_scratch(scratch);
        }
        // SAFETY: one gemm per image wrote all `len` elements.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((n, c_out, oh, ow))))
    }
}

/// `conv(xs, weight)` without bias: `xs (N, C, H, W)`, `weight (C_out, C·kh·kw)` (a
/// `(C_out, C, kh, kw)` kernel flattened), output `(N, C_out, OH, OW)` as `window` says.
pub fn conv_gemm(xs: &Tensor, weight: &Tensor, window: Window) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &ConvGemm { window })
}

/// A dense convolution on [`PackedFilter`] weights with its bias, the residual (the
/// second operand of the two-operand form) and the activation fused
/// (`packed_conv`, AVX-512 only).
struct PackedConv<'a> {
    filter: &'a PackedFilter,
    window: Window,
    act: Activation,
}

impl PackedConv<'_> {
    fn run(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "idunno-packed-conv";
        if !packed_available() {
            bail!("{op}: this CPU has no AVX-512F")
        }
        let (n, c, h, w) = xs_l.shape().dims4()?;
        let win = self.window;
        win.check(op)?;
        if !packed_conv::image_fits(c, h, w, win) {
            bail!(
                "{op}: a {c}x{h}x{w} image is more than the {} floats it takes padded",
                packed_conv::MAX_IMAGE
            )
        }
        let (oh, ow) = win.out;
        let c_out = self.filter.c_out();
        if c != self.filter.c_in() || win.kernel != self.filter.kernel() {
            bail!(
                "{op}: a {:?} filter for {} channels applied to {c} channels with {:?} windows",
                self.filter.kernel(),
                self.filter.c_in(),
                win.kernel
            )
        }
        let shape = Shape::from((n, c_out, oh, ow));
        let residual = match residual {
            None => None,
            Some((r, r_l)) => {
                if r_l.shape() != &shape {
                    bail!(
                        "{op}: residual {:?} does not match the output {shape:?}",
                        r_l.shape()
                    )
                }
                Some(f32_slice(r, r_l, op)?)
            }
        };
        let xs = f32_slice(xs, xs_l, op)?;
        let len = shape.elem_count();
        let mut out: Vec<f32> = Vec::with_capacity(len);
        if len > 0 && h * w > 0 && c > 0 {
            // SAFETY: AVX-512F is present (checked above); `out` has room for the whole
            // output and `residual` is exactly that long; with at least one row of `k`,
            // `conv` writes every element.
            unsafe {
                packed_conv::conv(
                    xs,
                    (n, c, h, w),
                    win,
                    self.filter,
                    residual,
                    self.act,
                    &mut out.spare_capacity_mut()[..len],
                );
                out.set_len(len);
            }
        } else {
            // No input pixels or channels: every sum is zero, so the bias alone.
            let plane = oh * ow;
            out.extend((0..len).map(|i| {
                let r = residual.map_or(0.0, |r| r[i]);
                self.act.scalar(self.filter.bias()[(i / plane) % c_out] + r)
            }));
        }
        Ok((CpuStorage::F32(out), shape))
    }
}

impl CustomOp1 for PackedConv<'_> {
    fn name(&self) -> &'static str {
        "idunno-packed-conv"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xs_l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(xs, xs_l, None)
    }
}

impl CustomOp2 for PackedConv<'_> {
    fn name(&self) -> &'static str {
        "idunno-packed-conv-residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        residual: &CpuStorage,
        residual_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(xs, xs_l, Some((residual, residual_l)))
    }
}

/// `act(conv(xs, filter) + bias (+ residual))` on packed weights: `xs (N, C, H, W)`,
/// output `(N, C_out, OH, OW)` as `window` says. Needs AVX-512F ([`packed_available`]).
pub fn packed_conv(
    xs: &Tensor,
    filter: &PackedFilter,
    window: Window,
    residual: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let op = PackedConv {
        filter,
        window,
        act,
    };
    let xs = xs.contiguous()?;
    match residual {
        None => xs.apply_op1_no_bwd(&op),
        Some(r) => xs.apply_op2_no_bwd(&r.contiguous()?, &op),
    }
}

/// In-place epilogue of a convolution: `x = act(x + bias[c] (+ residual))`.
struct BiasAct {
    act: Activation,
}

impl BiasAct {
    /// `dst` and `residual` are `(N, C, P)` with `P = plane`, `bias` is `(C)`.
    fn run(&self, dst: &mut [f32], plane: usize, bias: &[f32], residual: Option<&[f32]>) {
        let channels = bias.len();
        if dst.is_empty() || channels == 0 || plane == 0 {
            return;
        }
        // Tasks of at least ~16k elements: small planes are grouped.
        let per_task = (16 * 1024 / plane).max(1);
        dst.par_chunks_mut(plane * per_task)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (k, row) in chunk.chunks_mut(plane).enumerate() {
                    let index = task * per_task + k;
                    let b = bias[index % channels];
                    match residual {
                        Some(r) => {
                            let r = &r[index * plane..index * plane + row.len()];
                            row.iter_mut().zip(r).for_each(|(x, r)| *x = *x + b + r);
                        }
                        None => row.iter_mut().for_each(|x| *x += b),
                    }
                    self.act.apply(row);
                }
            });
    }

    /// The plane size `P` of `dst (N, C, …)`, after checking that `bias` is `(C)`.
    fn plane(&self, dst_l: &Layout, bias_l: &Layout) -> Result<usize> {
        let dims = dst_l.shape().dims();
        if dims.len() < 2 || bias_l.shape().dims() != [dims[1]] {
            bail!(
                "bias-activation: bias {:?} does not fit {:?}",
                bias_l.shape(),
                dst_l.shape()
            )
        }
        Ok(dims[2..].iter().product())
    }
}

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "idunno-bias-act"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<()> {
        let op = InplaceOp2::name(self);
        let plane = self.plane(dst_l, bias_l)?;
        let bias = f32_slice(bias, bias_l, op)?;
        self.run(f32_slice_mut(dst, dst_l, op)?, plane, bias, None);
        Ok(())
    }
}

impl InplaceOp3 for BiasAct {
    fn name(&self) -> &'static str {
        "idunno-bias-residual-act"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
        residual: &CpuStorage,
        residual_l: &Layout,
    ) -> Result<()> {
        let plane = self.plane(dst_l, bias_l)?;
        if residual_l.shape() != dst_l.shape() {
            bail!(
                "bias-activation: residual {:?} does not match {:?}",
                residual_l.shape(),
                dst_l.shape()
            )
        }
        let op = InplaceOp3::name(self);
        let bias = f32_slice(bias, bias_l, op)?;
        let residual = f32_slice(residual, residual_l, op)?;
        self.run(f32_slice_mut(dst, dst_l, op)?, plane, bias, Some(residual));
        Ok(())
    }
}

/// `act(xs + bias[c] + residual)` on `xs (N, C, …)`, in place when `xs` is
/// contiguous (it must not be shared with a tensor still in use).
pub fn bias_act(
    xs: Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let xs = xs.contiguous()?;
    let bias = bias.contiguous()?;
    let op = BiasAct { act };
    match residual {
        Some(r) => xs.inplace_op3(&bias, &r.contiguous()?, &op)?,
        None => xs.inplace_op2(&bias, &op)?,
    }
    Ok(xs)
}

/// What a pooling window computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolKind {
    /// The maximum (padding is `-inf`, i.e. ignored).
    Max,
    /// The mean over the whole window, padding included (PyTorch's
    /// `count_include_pad=True`).
    Avg,
}

/// 2-D pooling with PyTorch semantics (floor output size), separably: a
/// horizontal pass over each input row, then a vertical pass over whole rows.
struct Pool {
    kind: PoolKind,
    kernel: usize,
    stride: usize,
    pad: usize,
}

impl Pool {
    /// One output plane (OH·OW) from one input plane (H·W); `rows` is scratch.
    fn plane(&self, src: &[f32], hw: (usize, usize), dst: &mut [f32], rows: &mut Vec<f32>) {
        let max = self.kind == PoolKind::Max;
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
            return unsafe {
                if max {
                    self.plane_avx2::<true>(src, hw, dst, rows)
                } else {
                    self.plane_avx2::<false>(src, hw, dst, rows)
                }
            };
        }
        if max {
            self.plane_impl::<true>(src, hw, dst, rows)
        } else {
            self.plane_impl::<false>(src, hw, dst, rows)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_avx2<const MAX: bool>(
        &self,
        src: &[f32],
        hw: (usize, usize),
        dst: &mut [f32],
        rows: &mut Vec<f32>,
    ) {
        self.plane_impl::<MAX>(src, hw, dst, rows)
    }

    /// [`Pool::plane`] for a max (`MAX`) or a sum: every loop is a contiguous one the
    /// compiler vectorises (a stride-2 row is first split into its even and odd elements;
    /// the element-wise max and sum are known at compile time).
    #[inline(always)]
    fn plane_impl<const MAX: bool>(
        &self,
        src: &[f32],
        (h, w): (usize, usize),
        dst: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let combine = |a: f32, b: f32| if MAX { a.max(b) } else { a + b };
        let (k, s, pad) = (self.kernel, self.stride, self.pad);
        if s == 1 && k == 2 * pad + 1 {
            return self.plane_same::<MAX>(src, (h, w), dst, scratch);
        }
        let ow = (w + 2 * pad - k) / s + 1;
        let start = if MAX { f32::NEG_INFINITY } else { 0.0 };
        scratch.clear();
        scratch.resize(h * ow + w, start);
        let (rows, phases) = scratch.split_at_mut(h * ow);
        let (even, odd) = phases.split_at_mut(w.div_ceil(2));
        for (row, out) in src.chunks_exact(w).zip(rows.chunks_exact_mut(ow)) {
            if s == 2 {
                let pairs = row.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    even[w / 2] = *last;
                }
                for (pair, (e, o)) in pairs.zip(even.iter_mut().zip(odd.iter_mut())) {
                    *e = pair[0];
                    *o = pair[1];
                }
            }
            for j in 0..k {
                let (lo, hi, ix) = valid_range(j, s, pad, w, ow);
                let out = &mut out[lo..hi];
                let n = out.len();
                let from: &[f32] = match s {
                    1 => &row[ix..ix + n],
                    2 if ix % 2 == 0 => &even[ix / 2..ix / 2 + n],
                    2 => &odd[ix / 2..ix / 2 + n],
                    _ => {
                        for (o, x) in out.iter_mut().zip(row[ix..].iter().step_by(s)) {
                            *o = combine(*o, *x);
                        }
                        continue;
                    }
                };
                for (o, x) in out.iter_mut().zip(from) {
                    *o = combine(*o, *x);
                }
            }
        }
        let scale = 1.0 / (k * k) as f32;
        for (oy, out) in dst.chunks_exact_mut(ow).enumerate() {
            out.fill(start);
            for i in 0..k {
                let Some(iy) = (oy * s + i).checked_sub(pad).filter(|&iy| iy < h) else {
                    continue;
                };
                for (o, x) in out.iter_mut().zip(&rows[iy * ow..(iy + 1) * ow]) {
                    *o = combine(*o, *x);
                }
            }
            if !MAX {
                out.iter_mut().for_each(|o| *o *= scale);
            }
        }
    }

    /// [`Pool::plane`] for a stride-1 window that keeps the plane's size (`kernel = 2·pad +
    /// 1`, Inception's 3×3 average pools): each pass runs over the whole plane at once, not
    /// row by row (an 8×8 or 17×17 plane's rows are too short for a vector loop to pay).
    /// Horizontally every element takes its neighbours `d` to either side, then the few
    /// within `pad` of a row's end, which took the neighbouring row's, are done again;
    /// vertically a row `d` up or down is `d·w` away, and rows past the plane are skipped
    /// (padding: nothing for a max, zeros for a sum).
    #[inline(always)]
    fn plane_same<const MAX: bool>(
        &self,
        src: &[f32],
        (h, w): (usize, usize),
        dst: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let combine = |a: f32, b: f32| if MAX { a.max(b) } else { a + b };
        let start = if MAX { f32::NEG_INFINITY } else { 0.0 };
        let (n, pad) = (h * w, self.pad);
        scratch.clear();
        scratch.extend_from_slice(&src[..n]);
        let rows = &mut scratch[..n];
        for d in 1..=pad.min(n.saturating_sub(1)) {
            for (o, x) in rows[..n - d].iter_mut().zip(&src[d..n]) {
                *o = combine(*o, *x);
            }
            for (o, x) in rows[d..].iter_mut().zip(&src[..n - d]) {
                *o = combine(*o, *x);
            }
        }
        let edges = (0..pad.min(w)).chain(w.saturating_sub(pad).max(pad)..w);
        for x in edges {
            let (lo, hi) = (x.saturating_sub(pad), (x + pad + 1).min(w));
            for (out, row) in rows.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
                out[x] = row[lo..hi].iter().fold(start, |a, b| combine(a, *b));
            }
        }
        let dst = &mut dst[..n];
        dst.copy_from_slice(rows);
        for d in (1..=pad).take_while(|d| d * w < n) {
            let dw = d * w;
            for (o, x) in dst[..n - dw].iter_mut().zip(&rows[dw..]) {
                *o = combine(*o, *x);
            }
            for (o, x) in dst[dw..].iter_mut().zip(&rows[..n - dw]) {
                *o = combine(*o, *x);
            }
        }
        if !MAX {
            let scale = 1.0 / (self.kernel * self.kernel) as f32;
            dst.iter_mut().for_each(|o| *o *= scale);
        }
    }
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "idunno-max-pool2d",
            PoolKind::Avg => "idunno-avg-pool2d",
        }
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xs_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = xs_l.shape().dims4()?;
        let xs = f32_slice(xs, xs_l, self.name())?;
        let (k, s, pad) = (self.kernel, self.stride, self.pad);
        if k == 0 || s == 0 || pad > k / 2 || h + 2 * pad < k || w + 2 * pad < k {
            bail!(
                "{}: kernel {k}, stride {s}, padding {pad} do not fit {h}x{w}",
                self.name()
            )
        }
        let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
        let mut out = vec![0f32; n * c * oh * ow];
        if !out.is_empty() {
            out.par_chunks_mut(oh * ow).enumerate().for_each_init(
                Vec::new,
                |rows, (plane, dst)| {
                    let src = &xs[plane * h * w..(plane + 1) * h * w];
                    self.plane(src, (h, w), dst, rows);
                },
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// PyTorch `F.max_pool2d(xs, kernel, stride, padding)` on `(N, C, H, W)`.
pub fn max_pool(xs: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Pool {
        kind: PoolKind::Max,
        kernel,
        stride,
        pad,
    })
}

/// PyTorch `F.avg_pool2d(xs, kernel, stride, padding)` (`count_include_pad=True`)
/// on `(N, C, H, W)`.
pub fn avg_pool(xs: &Tensor, kernel: usize, stride: usize, pad: usize) -> Result<Tensor> {
    xs.contiguous()?.apply_op1_no_bwd(&Pool {
        kind: PoolKind::Avg,
        kernel,
        stride,
        pad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    fn wave(dims: &[usize]) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)?
            .affine(0.37, 0.2)?
            .sin()?
            .reshape(dims)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Pooling agrees with candle's pools on explicitly padded inputs (edge
    /// replication is neutral for a max, zeros are what PyTorch's average counts).
    #[test]
    fn pools_match_candle() -> Result<()> {
        for (h, w) in [(9, 9), (8, 11), (3, 3), (17, 16), (1, 5), (2, 2)] {
            let x = wave(&[2, 3, h, w])?;
            if h >= 3 && w >= 3 {
                let want = x.max_pool2d_with_stride(3, 2)?;
                assert_eq!(max_diff(&max_pool(&x, 3, 2, 0)?, &want)?, 0.0);
            }
            // candle's max pool on `x` padded by copies of its edges, its average pool on
            // `x` padded by zeros, both `pad` on every side.
            let max_ref = |k, s, pad| {
                x.pad_with_same(D::Minus1, pad, pad)?
                    .pad_with_same(D::Minus2, pad, pad)?
                    .max_pool2d_with_stride(k, s)
            };
            let avg_ref = |k, s, pad| {
                x.pad_with_zeros(D::Minus2, pad, pad)?
                    .pad_with_zeros(D::Minus1, pad, pad)?
                    .avg_pool2d_with_stride(k, s)
            };
            assert_eq!(max_diff(&max_pool(&x, 3, 2, 1)?, &max_ref(3, 2, 1)?)?, 0.0);
            assert!(max_diff(&avg_pool(&x, 3, 1, 1)?, &avg_ref(3, 1, 1)?)? < 1e-6);
            // Stride-1 windows that keep the plane's size run over whole planes.
            assert_eq!(max_diff(&max_pool(&x, 3, 1, 1)?, &max_ref(3, 1, 1)?)?, 0.0);
            assert!(max_diff(&avg_pool(&x, 5, 1, 2)?, &avg_ref(5, 1, 2)?)? < 1e-6);
        }
        assert!(max_pool(&wave(&[1, 1, 2, 2])?, 3, 2, 0).is_err());
        let err = max_pool(&wave(&[1, 1, 4, 4])?.to_dtype(DType::F64)?, 3, 2, 0).unwrap_err();
        assert!(err.to_string().contains("f32"), "{err}");
        Ok(())
    }
}
