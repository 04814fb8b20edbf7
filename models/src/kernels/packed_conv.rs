//! Dense convolutions on AVX-512 as an implicit GEMM over weights packed once at load.
//!
//! The layer's weight matrix `(C_out, C·kh·kw)` is packed when the model loads into panels
//! of [`NR`] output channels (`[panel][k][NR]`, the channels of one `k` side by side), so
//! no call repacks it. A call computes `out (N, C_out, OH, OW)` as that matrix times the
//! input's im2col matrix, but the im2col matrix is never built whole: a block of output
//! pixels (up to [`MC`]) is gathered for [`KC`] rows of `k` at a time into a cache-sized
//! buffer, as pixel panels of 48 (16 for the tail) side by side per `k` — from the input
//! laid out once per call as [`grid`] lays it out (zero-padded, split into stride phases),
//! where each lane of a panel is a fixed offset from every row's start: one masked load, or
//! two loads and a permute, per 16 lanes and row. A 1×1 stride-1 layer's panels that lie
//! in one image are not gathered at all: their rows are the input's channel planes, read
//! in place. The microkernel keeps an [`NR`] channels × 48 pixels tile of sums
//! in 24 zmm registers: per `k` it loads three vectors of pixels (asked for 8 rows ahead)
//! and broadcasts eight weights, four `k` per loop turn. After the last block of `k` the
//! tile gets the bias, the residual and the activation while it is still in L1, so the
//! output is written once and never revisited.
//!
//! A layer with a larger kernel or a stride on images of their own (not sharing panels) is
//! not gathered either ([`grid`]): its input is copied once into zero-padded planes (split
//! into its stride phases when strided), where every tap's pixels for a run of output
//! positions are contiguous, and the microkernel reads them in place, one segment of rows
//! per tap (the filter's `k` is tap-major for it).
//!
//! Small images (a plane of at most [`MC`] pixels, the late layers of a batched pass)
//! share panels across image boundaries, so a 7×7 plane does not waste most of a panel;
//! their sums go to a `(C_out, N·P)` buffer and one parallel pass applies the epilogue
//! while moving them into place. Work is split over the calling thread's rayon pool by
//! pixel block (a whole number of blocks per thread) and, for layers with more output
//! channels than pixels or too few blocks for the pool, by channel range — the pixels then
//! gathered once for all tasks instead of once per task. One image's small planes, where
//! the 48-pixel tiles would leave many lanes dead (7×7 at batch 1), go to [`small`], whose
//! tiles have the output channels as their lanes. Only used where the CPU has AVX-512F
//! ([`available`]); elsewhere the layers keep the im2col + `gemm` crate path.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Activation, Window};

mod grid;
mod small;

/// Output channels per microkernel tile (broadcast operand).
const NR: usize = 8;
/// Output pixels per full panel (three zmm vectors).
const MR: usize = 48;
/// Output pixels per tail panel (one zmm vector).
const MR_TAIL: usize = 16;
/// Rows of `k` per packed block: a weight panel of them is 16 KiB (L1), a 48-pixel panel
/// 96 KiB. 512 measured 2–5 % faster than 256 (fewer passes over the output tile).
const KC: usize = 512;
/// Output pixels per thread's block: `MC × KC` floats (960 KiB) stay in L2 (2 MiB here);
/// 240 measured slower.
const MC: usize = 480;
/// Most floats a call gathers once for all its tasks (64 MiB); past that (huge batches on
/// many threads) each task gathers its own block.
const SHARED_MAX: usize = 16 << 20;
/// Rows of `k` ahead the microkernel asks for its pixels.
const PIXEL_AHEAD: usize = 8;

/// Whether this CPU runs the packed kernel (AVX-512F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Most floats one image may take laid out for gathering (2²⁷, 512 MiB).
pub const MAX_IMAGE: usize = grid::MAX_IMAGE;

/// Whether [`conv`] takes one image of `c × h × w` under `win`: at most [`MAX_IMAGE`]
/// floats once laid out for gathering (zero-padded, split into stride phases).
pub fn image_fits(c: usize, h: usize, w: usize, win: Window) -> bool {
    grid::image_fits(c, (h, w), win)
}

/// A dense convolution's weights in the microkernel's layout, with the layer's bias.
#[derive(Debug, Clone)]
pub struct PackedFilter {
    c_out: usize,
    c_in: usize,
    kernel: (usize, usize),
    /// `[ceil(c_out / NR)][k][NR]`, channels past `c_out` zero; `k` tap-major (row
    /// `tap·c_in + c`), so one tap's rows are the input's channel planes in order.
    panels: Vec<f32>,
    /// `(c_out)`, then zeros up to a whole panel.
    bias: Vec<f32>,
    /// The weights as channel tiles for one image's small planes ([`small`]), packed on
    /// first use.
    channel_tiles: OnceLock<small::ChannelTiles>,
}

impl PackedFilter {
    /// Packs `weight`, the row-major `(c_out, c_in·kh·kw)` matrix of a `(c_out, c_in, kh,
    /// kw)` kernel, and keeps `bias (c_out)`.
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        c_out: usize,
        c_in: usize,
        kernel: (usize, usize),
    ) -> candle_core::Result<Self> {
        let k = c_in * kernel.0 * kernel.1;
        if weight.len() != c_out * k || bias.len() != c_out {
            candle_core::bail!(
                "packing a {c_out}x{c_in}x{}x{} convolution: {} weights and {} biases",
                kernel.0,
                kernel.1,
                weight.len(),
                bias.len()
            )
        }
        let n_panels = c_out.div_ceil(NR);
        let taps = kernel.0 * kernel.1;
        let mut panels = vec![0f32; n_panels * k * NR];
        for (p, panel) in panels.chunks_exact_mut(k * NR).enumerate() {
            // Row `kk` of the panel is tap `kk / c_in` of input channel `kk % c_in`.
            for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
                let (tap, c) = (kk / c_in, kk % c_in);
                for (r, w) in row.iter_mut().enumerate() {
                    let ch = p * NR + r;
                    if ch < c_out {
                        *w = weight[ch * k + c * taps + tap];
                    }
                }
            }
        }
        let mut bias = bias.to_vec();
        bias.resize(n_panels * NR, 0.0);
        Ok(PackedFilter {
            c_out,
            c_in,
            kernel,
            panels,
            bias,
            channel_tiles: OnceLock::new(),
        })
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Input channels.
    pub fn c_in(&self) -> usize {
        self.c_in
    }

    /// Kernel `(height, width)`.
    pub fn kernel(&self) -> (usize, usize) {
        self.kernel
    }

    /// The bias, `(c_out)`.
    pub fn bias(&self) -> &[f32] {
        &self.bias[..self.c_out]
    }

    fn k(&self) -> usize {
        self.c_in * self.kernel.0 * self.kernel.1
    }
}

/// Shape of one call: `N` images of `C × H × W` in, `C_out × OH × OW` out.
#[derive(Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    win: Window,
    c_out: usize,
}

impl Geometry {
    /// Output pixels per image.
    fn plane(&self) -> usize {
        self.win.out.0 * self.win.out.1
    }
}

/// A pixel panel: output pixels `q0..q0 + valid` of the batch (`q = n·P + p`), packed
/// `width` wide (48 or 16; the pixels past `valid` are zeros).
#[derive(Clone, Copy)]
struct Panel {
    q0: usize,
    valid: usize,
    width: usize,
}

impl Panel {
    /// Whether all `width` pixels are real and lie in one image (`plane` pixels each).
    fn whole(&self, plane: usize) -> bool {
        self.valid == self.width && self.q0 % plane + self.width <= plane
    }
}

/// The batch's output pixels as panels: full 48-wide ones, then 16-wide ones for the rest.
fn panels(total: usize) -> Vec<Panel> {
    let mut out = Vec::with_capacity(total / MR + 3);
    let mut q0 = 0;
    while total - q0 >= MR {
        out.push(Panel {
            q0,
            valid: MR,
            width: MR,
        });
        q0 += MR;
    }
    while q0 < total {
        let valid = (total - q0).min(MR_TAIL);
        out.push(Panel {
            q0,
            valid,
            width: MR_TAIL,
        });
        q0 += valid;
    }
    out
}

/// The lanes of a 16-float vector that `left` more floats fill: all 16 when `left ≥ 16`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn lanes(left: usize) -> u16 {
    if left >= 16 {
        0xffff
    } else {
        (1u16 << left) - 1
    }
}

/// `act` applied to 16 floats (the vector form of [`Activation::scalar`]).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn activate(act: Activation, x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    match act {
        Activation::Identity => x,
        Activation::Relu => _mm512_max_ps(x, _mm512_setzero_ps()),
        Activation::Relu6 => {
            _mm512_min_ps(_mm512_max_ps(x, _mm512_setzero_ps()), _mm512_set1_ps(6.0))
        }
    }
}

/// `dst[i] = src[2·i]` for every `i` both slices have (`min(dst.len(), ⌈src.len() / 2⌉)`),
/// with vector permutes where the CPU has AVX-512F: the depthwise kernel's stride-2 phases.
pub(super) fn copy_stride2(dst: &mut [f32], src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512F; `copy_even` reads only within `src` and writes
        // only within `dst`.
        unsafe { copy_even(dst, src) };
        return;
    }
    for (o, x) in dst.iter_mut().zip(src.iter().step_by(2)) {
        *o = *x;
    }
}

/// `dst[i] = src[2·i]` (a stride-2 layer's run): two vectors in, their even lanes out.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn copy_even(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let n = dst.len().min(src.len().div_ceil(2));
    let mut i = 0;
    while i < n {
        let from = 2 * i;
        let lo = _mm512_maskz_loadu_ps(lanes(src.len() - from), src.as_ptr().add(from));
        let hi = if src.len() > from + 16 {
            _mm512_maskz_loadu_ps(lanes(src.len() - from - 16), src.as_ptr().add(from + 16))
        } else {
            _mm512_setzero_ps()
        };
        let v = _mm512_permutex2var_ps(lo, even, hi);
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), lanes(n - i), v);
        i += 16;
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_even(dst: &mut [f32], src: &[f32]) {
    for (o, x) in dst.iter_mut().zip(src.iter().step_by(2)) {
        *o = *x;
    }
}

/// 64-byte aligned floats (a panel row then starts on a cache line).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    /// This thread's packed pixel block (taken while in use: a task never nests).
    static BLOCK: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    /// The pixels a call packs once for all its tasks, kept by the calling thread.
    static SHARED: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    /// The `(C_out, N·P)` sums of a call on small images, kept by the calling thread.
    static SUMS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// A panel's pixels for the microkernel: segments of `rows` rows of the panel's width,
/// `stride` apart, segment `i` from `at + starts[i]` (a gathered or 1×1 panel is one
/// segment; a grid panel has one per kernel tap).
#[derive(Clone, Copy)]
struct Pixels<'a> {
    at: *const f32,
    stride: usize,
    rows: usize,
    starts: &'a [usize],
}

/// Where a call writes: the output, and what the last pass of `k` folds into it.
struct Sink<'a> {
    out: *mut f32,
    /// Small images: the sums go to this `(C_out rounded up to NR, columns)` buffer
    /// (pointer, columns) instead, column = pixel, and the epilogue comes after.
    merged: Option<(*mut f32, usize)>,
    residual: Option<&'a [f32]>,
    bias: &'a [f32],
    act: Activation,
}

// SAFETY: tasks write disjoint tiles of `out` (distinct pixel blocks or channel ranges).
unsafe impl Send for Sink<'_> {}
unsafe impl Sync for Sink<'_> {}

/// `out (N, C_out, OH, OW) = act(conv(xs, filter) + bias (+ residual))`; `xs` is
/// `(N, C, H, W)`, every element of `out` is written.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]); `out` must hold `N·C_out·OH·OW` floats and
/// `residual`, when given, as many.
#[allow(clippy::too_many_arguments)]
pub unsafe fn conv(
    xs: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    win: Window,
    filter: &PackedFilter,
    residual: Option<&[f32]>,
    act: Activation,
    out: &mut [std::mem::MaybeUninit<f32>],
) {
    let g = Geometry {
        c,
        h,
        w,
        win,
        c_out: filter.c_out,
    };
    let k = filter.k();
    debug_assert_eq!(xs.len(), n * c * h * w);
    debug_assert_eq!(out.len(), n * filter.c_out * g.plane());
    let plane = g.plane();
    // Small images share panels (a 7×7 plane would waste most of its tail panel): the
    // sums then go to a `(C_out, N·P)` buffer, and the epilogue moves them into place.
    // Larger images get panels of their own and are written in place.
    let merged = n > 1 && plane <= MC;
    // Tiles written straight into the output; the merged mode's sums are set below.
    let direct_sink = Sink {
        out: out.as_mut_ptr().cast::<f32>(),
        merged: None,
        residual,
        bias: &filter.bias,
        act,
    };
    if small::fits(n, plane) {
        // SAFETY: the caller's contract.
        unsafe { small::conv(xs, &g, filter, &direct_sink) };
        return;
    }
    if grid::fits(n, c, (h, w), win) {
        // SAFETY: the caller's contract.
        unsafe { grid::conv(xs, n, &g, filter, &direct_sink) };
        return;
    }
    let panels = if merged {
        panels(n * plane)
    } else {
        (0..n)
            .flat_map(|image| {
                panels(plane).into_iter().map(move |p| Panel {
                    q0: image * plane + p.q0,
                    ..p
                })
            })
            .collect()
    };
    // A 1×1 layer's im2col rows are the input's channel planes: read them in place.
    let direct = win.is_pointwise(h, w);
    let threads = rayon::current_num_threads().max(1);
    let plan = Plan::new(&panels, filter.c_out, n * plane, threads);
    let blocks = &plan.blocks;
    let columns: usize = panels.iter().map(|p| p.width).sum();
    // Too few blocks for the pool (small images, late layers): split the channels too, in
    // whole panels, and pack the pixels once for all tasks rather than once per task.
    let n_panels = filter.c_out.div_ceil(NR);
    let shared_pack = plan.split && k * columns <= SHARED_MAX;
    let items = plan.items(n_panels, threads, shared_pack);
    let needs_pack = |panel: &Panel| !(direct && panel.whole(plane));
    // Panels are gathered from the input laid out as the grid lays it out: each lane a
    // fixed offset per row of `k` (a 1×1 stride-1 layer's input is that layout already).
    let padded = grid::Padded::new(xs, n, &g);
    let gather = |panel: Panel, rows: (usize, usize), dst: &mut [f32]| {
        // SAFETY: AVX-512F is present (the caller's contract); the lanes are `padded`'s.
        unsafe { padded.gather(&padded.lanes(panel), rows, dst) }
    };
    // Shared packing: every panel's `k × width` rows, panel after panel.
    let mut shared = Vec::new();
    let mut shared_at = Vec::new();
    if shared_pack {
        let mut total = 0;
        for panel in &panels {
            shared_at.push(total);
            if needs_pack(panel) {
                total += k * panel.width;
            }
        }
        shared = SHARED.with(|s| s.take());
        if shared.len() < total / 16 {
            shared.resize(total / 16, Line([0.0; 16]));
        }
        let buf = lines_as_floats(&mut shared);
        let mut parts = Vec::with_capacity(panels.len());
        let mut rest = &mut buf[..total];
        for panel in &panels {
            let len = if needs_pack(panel) {
                k * panel.width
            } else {
                0
            };
            let (part, tail) = rest.split_at_mut(len);
            parts.push((*panel, part));
            rest = tail;
        }
        parts
            .into_par_iter()
            .filter(|(_, part)| !part.is_empty())
            .for_each(|(panel, part)| gather(panel, (0, k), part));
    }
    let shared_floats: &[f32] = lines_as_floats(&mut shared);
    let mut sums = Vec::new();
    if merged {
        sums = SUMS.with(|s| s.take());
        sums.clear();
        sums.reserve(n_panels * NR * columns);
    }
    let sink = Sink {
        merged: merged.then_some((sums.as_mut_ptr(), columns)),
        ..direct_sink
    };
    let run = |(b, channel_panels): &(usize, std::ops::Range<usize>)| {
        let block_panels = &panels[blocks[*b].clone()];
        let mut own = Vec::new();
        if !shared_pack {
            own = BLOCK.with(|block| block.take());
            let width: usize = block_panels.iter().map(|p| p.width).sum();
            if own.len() < width * KC / 16 {
                own.resize(width * KC / 16, Line([0.0; 16]));
            }
        }
        let buf = lines_as_floats(&mut own);
        let mut k0 = 0;
        while k0 < k {
            let rows = KC.min(k - k0);
            // This block's pixels for rows `k0..k0 + rows`, one pointer per panel.
            let mut at = Vec::with_capacity(block_panels.len());
            let mut offset = 0;
            for (i, panel) in block_panels.iter().enumerate() {
                let pixels = if !needs_pack(panel) {
                    let (image, p0) = (panel.q0 / plane, panel.q0 % plane);
                    Pixels {
                        at: xs[(image * g.c + k0) * plane + p0..].as_ptr(),
                        stride: plane,
                        rows,
                        starts: &[0],
                    }
                } else if shared_pack {
                    let base = shared_at[blocks[*b].start + i] + k0 * panel.width;
                    Pixels {
                        at: shared_floats[base..base + rows * panel.width].as_ptr(),
                        stride: panel.width,
                        rows,
                        starts: &[0],
                    }
                } else {
                    let len = rows * panel.width;
                    let part = &mut buf[offset..offset + len];
                    offset += len;
                    gather(*panel, (k0, rows), part);
                    Pixels {
                        at: part.as_ptr(),
                        stride: panel.width,
                        rows,
                        starts: &[0],
                    }
                };
                at.push(pixels);
            }
            let (first, last) = (k0 == 0, k0 + rows == k);
            for cp in channel_panels.clone() {
                let weights = &filter.panels[(cp * k + k0) * NR..(cp * k + k0 + rows) * NR];
                for (panel, pixels) in block_panels.iter().zip(&at) {
                    // SAFETY: AVX-512F is present (the caller's contract); `pixels` has
                    // `rows` rows of the panel's width, the tile lies inside `out`, and no
                    // other task writes it.
                    unsafe { tile(&g, &sink, *panel, cp * NR, *pixels, weights, first, last) };
                }
            }
            k0 += rows;
        }
        if !shared_pack {
            BLOCK.with(|block| block.set(own));
        }
    };
    if items.len() == 1 || threads == 1 {
        items.iter().for_each(run);
    } else {
        items.par_iter().for_each(run);
    }
    if shared_pack {
        SHARED.with(|s| s.set(shared));
    }
    padded.finish();
    if merged {
        // SAFETY: the tiles wrote every `(channel < n_panels·NR, column)` sum.
        unsafe { sums.set_len(n_panels * NR * columns) };
        let out = &mut out[..n * filter.c_out * plane];
        out.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(index, dst)| {
                let (image, ch) = (index / filter.c_out, index % filter.c_out);
                let src = &sums[ch * columns + image * plane..][..plane];
                let res = residual.map(|r| &r[index * plane..(index + 1) * plane]);
                finish_plane(dst, src, filter.bias[ch], res, act);
            });
        SUMS.with(|s| s.set(sums));
    }
}

/// `dst[i] = act(src[i] + bias + residual[i])` (no residual: 0), the merged mode's epilogue
/// for one output plane; the same operations in the same order as the microkernel's.
fn finish_plane(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    bias: f32,
    residual: Option<&[f32]>,
    act: Activation,
) {
    let n = dst.len().min(src.len());
    #[cfg(target_arch = "x86_64")]
    if available() && residual.is_none_or(|r| r.len() >= n) {
        // SAFETY: the CPU has AVX-512F; reads stay within `src[..n]` and `residual[..n]`,
        // writes within `dst[..n]`.
        unsafe { finish_plane_avx512(&mut dst[..n], &src[..n], bias, residual, act) };
        return;
    }
    for (i, (o, x)) in dst[..n].iter_mut().zip(src).enumerate() {
        let r = residual.map_or(0.0, |r| r[i]);
        o.write(act.scalar(x + bias + r));
    }
}

/// [`finish_plane`] 16 floats at a time.
///
/// # Safety
/// The CPU must have AVX-512F; `src` and `residual` (if any) at least as long as `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn finish_plane_avx512(
    dst: &mut [MaybeUninit<f32>],
    src: &[f32],
    bias: f32,
    residual: Option<&[f32]>,
    act: Activation,
) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let (out, from) = (dst.as_mut_ptr().cast::<f32>(), src.as_ptr());
    let b = _mm512_set1_ps(bias);
    let mut i = 0;
    while i < n {
        let mask = lanes(n - i);
        let mut x = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, from.add(i)), b);
        if let Some(r) = residual {
            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, r.as_ptr().add(i)));
        }
        _mm512_mask_storeu_ps(out.add(i), mask, activate(act, x));
        i += 16;
    }
}

/// How a call's panels are dealt out: blocks of consecutive panels, and whether the output
/// channels are split between tasks too.
struct Plan {
    blocks: Vec<std::ops::Range<usize>>,
    /// Too few blocks for the pool, or a layer with more channels than pixels.
    split: bool,
}

impl Plan {
    /// Pixel blocks: runs of panels, at most MC pixels (a block stays in L2). Every block
    /// streams all the weights, so a layer with more output channels than pixels (late
    /// layers at small batches) takes blocks as large as they come and splits its
    /// channels between the threads; others take blocks small enough for four per thread.
    fn new(panels: &[Panel], c_out: usize, pixels: usize, threads: usize) -> Plan {
        let weight_heavy = c_out >= pixels;
        let columns: usize = panels.iter().map(|p| p.width).sum();
        let mut n_blocks = if weight_heavy {
            columns.div_ceil(MC)
        } else {
            columns.div_ceil((columns.div_ceil(4 * threads)).clamp(2 * MR, MC))
        };
        // A whole number of blocks per thread when there are several each (9 blocks on 2
        // threads would leave one thread idle for a ninth of the layer).
        if n_blocks >= 2 * threads {
            n_blocks = n_blocks.next_multiple_of(threads);
        }
        let n_blocks = n_blocks.clamp(1, panels.len());
        // Panels dealt out evenly: block `b` gets panels `b·len/n .. (b+1)·len/n`.
        let blocks = (0..n_blocks)
            .map(|b| b * panels.len() / n_blocks..(b + 1) * panels.len() / n_blocks)
            .collect();
        Plan {
            blocks,
            split: threads > 1 && (weight_heavy || n_blocks < 2 * threads),
        }
    }

    /// The tasks: every block with all `n_panels` channel panels, or — `split` — with each
    /// of as many ranges of them as give the pool two tasks per thread.
    fn items(
        &self,
        n_panels: usize,
        threads: usize,
        split: bool,
    ) -> Vec<(usize, std::ops::Range<usize>)> {
        let splits = if split {
            (2 * threads).div_ceil(self.blocks.len()).min(n_panels)
        } else {
            1
        };
        let per_split = n_panels.div_ceil(splits.max(1));
        (0..self.blocks.len())
            .flat_map(|b| {
                (0..n_panels)
                    .step_by(per_split)
                    .map(move |p0| (b, p0..(p0 + per_split).min(n_panels)))
            })
            .collect()
    }
}

/// The floats of a line buffer.
fn lines_as_floats(lines: &mut [Line]) -> &mut [f32] {
    // SAFETY: `Line` is 16 plain floats, `repr(C)`, no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<f32>(), lines.len() * 16) }
}

/// One `NR × panel` tile for the rows of `k` in `pixels`: straight into the output when the
/// tile is whole (all its channels exist, its pixels lie in one image), else through a
/// buffer.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn tile(
    g: &Geometry,
    sink: &Sink,
    panel: Panel,
    ch0: usize,
    pixels: Pixels,
    weights: &[f32],
    first: bool,
    last: bool,
) {
    if let Some((sums, columns)) = sink.merged {
        // SAFETY: the tile, `NR` rows of `width` floats `columns` apart from this corner,
        // lies inside the sums buffer.
        let c = sums.add(ch0 * columns + panel.q0);
        micro_for(
            panel.width,
            pixels,
            weights,
            Dest::dense(c, columns),
            !first,
            None,
        );
        return;
    }
    let plane = g.plane();
    let (image, p0) = (panel.q0 / plane, panel.q0 % plane);
    let whole = panel.valid == panel.width && p0 + panel.width <= plane && ch0 + NR <= g.c_out;
    if whole {
        let at = (image * g.c_out + ch0) * plane + p0;
        let c = sink.out.add(at);
        // SAFETY (all calls): `pixels` holds `rows × width` floats, `weights` `rows × NR`,
        // and the tile `NR` rows of `width` floats, `plane` apart, from `c` is in `out`.
        // After the last rows the epilogue is applied in registers: the residual tile has
        // the output tile's place and shape.
        let epilogue = last.then(|| Epilogue {
            bias: sink.bias[ch0..ch0 + NR].as_ptr(),
            residual: sink.residual.map(|res| res[at..].as_ptr()),
            act: sink.act,
        });
        micro_for(
            panel.width,
            pixels,
            weights,
            Dest::dense(c, plane),
            !first,
            epilogue,
        );
        return;
    }
    // The tile in a buffer: gathered from the output when adding to earlier sums,
    // scattered back (with the epilogue after the last rows).
    let mut buf = [0f32; NR * MR];
    let width = panel.width;
    let channels = NR.min(g.c_out - ch0);
    let index = |r: usize, x: usize| {
        let q = panel.q0 + x;
        ((q / plane) * g.c_out + ch0 + r) * plane + q % plane
    };
    if !first {
        for r in 0..channels {
            for x in 0..panel.valid {
                buf[r * width + x] = *sink.out.add(index(r, x));
            }
        }
    }
    micro_for(
        width,
        pixels,
        weights,
        Dest::dense(buf.as_mut_ptr(), width),
        !first,
        None,
    );
    for r in 0..channels {
        for x in 0..panel.valid {
            let i = index(r, x);
            let mut v = buf[r * width + x];
            if last {
                v += sink.bias[ch0 + r];
                if let Some(res) = sink.residual {
                    v += res[i];
                }
                v = sink.act.scalar(v);
            }
            *sink.out.add(i) = v;
        }
    }
}

/// What the microkernel applies to a finished tile before storing it.
#[derive(Clone, Copy)]
struct Epilogue {
    /// The tile's `NR` biases.
    bias: *const f32,
    /// The residual tile, laid out like the output tile.
    residual: Option<*const f32>,
    act: Activation,
}

/// [`micro`] for a panel `width` pixels wide (three vectors, two or one).
#[inline]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn micro_for(
    width: usize,
    pixels: Pixels,
    weights: &[f32],
    c: Dest,
    accumulate: bool,
    epilogue: Option<Epilogue>,
) {
    match width {
        MR => micro::<3>(pixels, weights.as_ptr(), c, accumulate, epilogue),
        32 => micro::<2>(pixels, weights.as_ptr(), c, accumulate, epilogue),
        _ => micro::<1>(pixels, weights.as_ptr(), c, accumulate, epilogue),
    }
}

/// Where a tile's sums go: row `r` (an output channel, `r < rows`) `ldc` floats apart from
/// `c`; vector `v` of a row either at `16·v` (all lanes), or — a grid tile, whose pixel
/// positions include the padded plane's extra columns — at `lanes[v].0`, only the lanes
/// `lanes[v].1`, compressed (the kept lanes are consecutive outputs).
#[derive(Clone, Copy)]
struct Dest {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    lanes: Option<[(usize, u16); 3]>,
}

impl Dest {
    /// A whole tile: `NR` rows of dense vectors.
    fn dense(c: *mut f32, ldc: usize) -> Dest {
        Dest {
            c,
            ldc,
            rows: NR,
            lanes: None,
        }
    }
}

/// The microkernel: `c[r][x] (+)= Σ_k weights[k][r] · pixels[k][x]` for `r < NR`,
/// `x < 16·V`, `k` over every row of every segment of `pixels`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn micro<const V: usize>(
    pixels: Pixels,
    weights: *const f32,
    d: Dest,
    accumulate: bool,
    epilogue: Option<Epilogue>,
) {
    use std::arch::x86_64::*;
    // Vector `v` of row `r` of a tile laid out like the destination, from `base`.
    let load = |base: *const f32, r: usize, v: usize| match d.lanes {
        None => _mm512_loadu_ps(base.add(r * d.ldc + v * 16)),
        Some(l) => _mm512_maskz_expandloadu_ps(l[v].1, base.add(r * d.ldc + l[v].0)),
    };
    let mut acc = [[_mm512_setzero_ps(); V]; NR];
    if accumulate {
        for (r, acc) in acc.iter_mut().enumerate().take(d.rows) {
            for (v, a) in acc.iter_mut().enumerate() {
                *a = load(d.c, r, v);
            }
        }
    }
    let mut b = weights;
    let stride = pixels.stride;
    let rows = pixels.rows;
    // One step of `k`: V vectors of pixels times NR broadcast weights.
    let step = |acc: &mut [[__m512; V]; NR], a: *const f32, b: *const f32| {
        let mut x = [_mm512_setzero_ps(); V];
        for (v, x) in x.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(a.add(v * 16));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let w = _mm512_set1_ps(*b.add(r));
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(x[v], w, *a);
            }
        }
    };
    for &start in pixels.starts {
        let mut a = pixels.at.wrapping_add(start);
        if pixels.starts.len() > 1 {
            // A segment's first rows: the previous segment's prefetches went past its end.
            for u in 0..PIXEL_AHEAD.min(rows) {
                for v in 0..V {
                    _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(u * stride + v * 16).cast());
                }
            }
        }
        // Four steps per iteration: ~15 % faster than one (loop overhead, scheduling).
        for _ in 0..rows / 4 {
            // The weights stream from memory when a layer's weights outgrow the caches (late
            // layers at small batches): ask for them 32 steps ahead.
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(32 * NR).cast());
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(32 * NR + 16).cast());
            for u in 0..4 {
                for v in 0..V {
                    // A hint only: past the end it fetches nothing harmful, hence
                    // `wrapping_add`.
                    let ahead = a.wrapping_add((u + PIXEL_AHEAD) * stride + v * 16);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
                step(&mut acc, a.add(u * stride), b.add(u * NR));
            }
            // Past the last row these point beyond the data (a 1×1 layer's last plane ends
            // at the input's end) and are never read: `wrapping_add`.
            a = a.wrapping_add(4 * stride);
            b = b.wrapping_add(4 * NR);
        }
        for _ in 0..rows % 4 {
            step(&mut acc, a, b);
            a = a.wrapping_add(stride);
            b = b.wrapping_add(NR);
        }
    }
    if let Some(e) = epilogue {
        for (r, acc) in acc.iter_mut().enumerate() {
            let bias = _mm512_set1_ps(*e.bias.add(r));
            for (v, a) in acc.iter_mut().enumerate() {
                let mut x = _mm512_add_ps(*a, bias);
                if let Some(res) = e.residual.filter(|_| r < d.rows) {
                    x = _mm512_add_ps(x, load(res, r, v));
                }
                *a = activate(e.act, x);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(d.rows) {
        for (v, a) in acc.iter().enumerate() {
            match d.lanes {
                None => _mm512_storeu_ps(d.c.add(r * d.ldc + v * 16), *a),
                Some(l) => {
                    let (at, mask) = l[v];
                    let kept = _mm512_maskz_compress_ps(mask, *a);
                    let n = mask.count_ones() as usize;
                    _mm512_mask_storeu_ps(d.c.add(r * d.ldc + at), lanes(n), kept);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro<const V: usize>(
    _pixels: Pixels,
    _weights: *const f32,
    _d: Dest,
    _accumulate: bool,
    _epilogue: Option<Epilogue>,
) {
    unreachable!("the packed kernel is only chosen on x86-64 with AVX-512F")
}
