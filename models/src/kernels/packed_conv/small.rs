//! One image's small output planes (the last stages of a pass at batch 1) with the output
//! channels, not the pixels, as the vector lanes.
//!
//! The pixel-major microkernel computes 16, 32 or 48 pixels per tile, so one image's 7×7
//! plane (49 pixels) costs 64 pixels' work: the last stage of a ResNet at batch 1 (a
//! quarter of a ResNet-18 pass) ran with 23 % of its lanes dead. Here a tile is [`CW`] output
//! channels (two vectors) × up to [`PX`] pixels: per row of `k` it loads the two vectors of
//! weights and broadcasts each pixel's value, so a plane of any size is cut into tiles of
//! whole pixels and no lane is wasted. The weights are packed for it on first use
//! (`[ceil(c_out / 32)][k][32]`, from the pixel-major panels); the pixels are the input's
//! channel planes read in place for a 1×1 stride-1 layer, else the image's im2col matrix
//! gathered once for all tasks. Tasks are channel tiles (and, for layers with few of them,
//! ranges of pixel tiles); the bias, the residual and the activation are applied as each
//! finished tile is written, so the output is written once.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::grid::Padded;
use super::{Geometry, Line, PackedFilter, Panel, Sink, NR};

/// Output channels per tile: two vectors.
pub(super) const CW: usize = 32;
/// Most pixels per tile: with two vectors each, 24 of the 32 vector registers hold sums.
const PX: usize = 12;
/// Largest output plane (pixels) this path takes: past it the pixel-major tiles waste
/// under 4 % of their lanes and reuse each weight for 48 pixels instead of 12.
const MAX_PLANE: usize = 480;
/// Rows of `k` per block: a tile's block of weights (16 KiB) stays in L1 while every pixel
/// tile uses it, so each weight comes from memory once per call.
const KB: usize = 128;
/// Rows of `k` ahead the kernel asks for its weights in L1 (it asks for the next block's,
/// [`KB`] rows ahead, in L2).
const WEIGHTS_AHEAD: usize = 16;

/// Whether one image's `plane`-pixel output goes through this path: where the pixel-major
/// tiles would waste more than one lane in twelve (a 7×7 plane 23 %, 5×5 22 %). Below that
/// (a 14×14 plane wastes 6 %) they win: a row of weights serves 48 pixels there, 12 here,
/// and measured one layer at a time this path lost on 14×14 planes.
pub(super) fn fits(n: usize, plane: usize) -> bool {
    if n != 1 || plane == 0 || plane > MAX_PLANE {
        return false;
    }
    let lanes = super::panels(plane).iter().map(|p| p.width).sum::<usize>();
    (lanes - plane) * 12 > plane
}

/// A filter's weights as channel tiles: `[ceil(c_out / CW)][k][CW]`, channels past `c_out`
/// zero, and the bias padded to whole tiles.
#[derive(Debug, Clone)]
pub(super) struct ChannelTiles {
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl ChannelTiles {
    /// Repacks `filter`'s pixel-major panels (`[c_out / NR][k][NR]`).
    fn new(filter: &PackedFilter) -> ChannelTiles {
        let k = filter.k();
        let tiles = filter.c_out.div_ceil(CW);
        let mut weights = vec![0f32; tiles * k * CW];
        for (t, tile) in weights.chunks_exact_mut(k * CW).enumerate() {
            for (kk, row) in tile.chunks_exact_mut(CW).enumerate() {
                for (part, dst) in row.chunks_exact_mut(NR).enumerate() {
                    let panel = t * (CW / NR) + part;
                    if panel * NR < filter.c_out {
                        let at = (panel * k + kk) * NR;
                        dst.copy_from_slice(&filter.panels[at..at + NR]);
                    }
                }
            }
        }
        let mut bias = filter.bias[..filter.c_out].to_vec();
        bias.resize(tiles * CW, 0.0);
        ChannelTiles { weights, bias }
    }

    /// `filter`'s channel tiles, packed on the first call (`cell` is the filter's).
    pub(super) fn of<'a>(filter: &PackedFilter, cell: &'a OnceLock<ChannelTiles>) -> &'a Self {
        cell.get_or_init(|| ChannelTiles::new(filter))
    }
}

/// `out (1, C_out, OH, OW) = act(conv(xs, filter) + bias (+ residual))` for one image.
///
/// # Safety
/// As [`super::conv`]: AVX-512F, `sink.out` holds `C_out·OH·OW` floats (and the residual
/// as many), `sink.merged` is `None`.
pub(super) unsafe fn conv(xs: &[f32], g: &Geometry, filter: &PackedFilter, sink: &Sink) {
    let tiles = ChannelTiles::of(filter, &filter.channel_tiles);
    let plane = g.plane();
    let k = filter.k();
    // The pixels: row `kk` of the im2col matrix at `kk · stride`.
    let mut gathered = Vec::new();
    let (pixels, stride): (&[f32], usize) = if g.win.is_pointwise(g.h, g.w) {
        (xs, plane)
    } else {
        // Rows an odd number of cache lines apart: a block's rows then fall in every set of
        // the L1 cache instead of a few (7×7 rows padded to 64 floats used a quarter).
        let stride = plane.next_multiple_of(16) | 16;
        gathered = super::BLOCK.with(|b| b.take());
        if gathered.len() < k * stride / 16 {
            gathered.resize(k * stride / 16, Line([0.0; 16]));
        }
        let buf = &mut super::lines_as_floats(&mut gathered)[..k * stride];
        let panel = Panel {
            q0: 0,
            valid: plane,
            width: stride,
        };
        // Rows in parallel chunks, gathered from the input laid out as the grid lays it
        // out (each lane a fixed offset per row of `k`).
        let rows_per = k.div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
        let padded = Padded::new(xs, 1, g);
        let lanes = padded.lanes(panel);
        buf.par_chunks_mut(rows_per * stride)
            .enumerate()
            .for_each(|(i, part)| {
                let rows = (i * rows_per, part.len() / stride);
                // SAFETY: AVX-512F is present (the caller's contract); `lanes` are
                // `padded`'s, `part` is `rows` rows of the panel's width.
                unsafe { padded.gather(&lanes, rows, part) };
            });
        padded.finish();
        (&super::lines_as_floats(&mut gathered)[..k * stride], stride)
    };
    // Pixel tiles of at most PX, as even as they come.
    let n_px = plane.div_ceil(PX);
    let px_tiles: Vec<(usize, usize)> = (0..n_px)
        .map(|i| (i * plane / n_px, (i + 1) * plane / n_px - i * plane / n_px))
        .collect();
    let n_ct = filter.c_out.div_ceil(CW);
    let threads = rayon::current_num_threads().max(1);
    // Few channel tiles for the pool: split the pixel tiles too.
    let px_splits = (2 * threads).div_ceil(n_ct).min(n_px).max(1);
    let items: Vec<(usize, std::ops::Range<usize>)> = (0..n_ct)
        .flat_map(|ct| {
            (0..px_splits).map(move |s| (ct, s * n_px / px_splits..(s + 1) * n_px / px_splits))
        })
        .collect();
    let run = |(ct, range): &(usize, std::ops::Range<usize>)| {
        let ch0 = ct * CW;
        let finish = |p0| Finish {
            sink,
            bias: &tiles.bias[ch0..ch0 + CW],
            ch0,
            c_out: filter.c_out,
            plane,
            p0,
        };
        let px_tiles = &px_tiles[range.clone()];
        // Each pixel tile's sums between blocks of `k`.
        let mut sums = vec![[[0f32; CW]; PX]; px_tiles.len()];
        let mut k0 = 0;
        while k0 < k {
            let rows = KB.min(k - k0);
            let weights = &tiles.weights[(ct * k + k0) * CW..(ct * k + k0 + rows) * CW];
            for (&(p0, px), sums) in px_tiles.iter().zip(&mut sums) {
                let step = Step {
                    first: k0 == 0,
                    last: k0 + rows == k,
                };
                // SAFETY: AVX-512F is present; `pixels` has `k` rows `stride` apart holding
                // this tile's pixels, `weights` `rows` rows of CW; the tile's outputs
                // (channels `ch0..` below `c_out`, pixels `p0..p0 + px`) are this task's
                // alone.
                unsafe {
                    tile(
                        pixels[k0 * stride + p0..].as_ptr(),
                        stride,
                        weights.as_ptr(),
                        rows,
                        px,
                        sums,
                        step,
                        &finish(p0),
                    )
                };
            }
            k0 += rows;
        }
    };
    if items.len() == 1 || threads == 1 {
        items.iter().for_each(run);
    } else {
        items.par_iter().for_each(run);
    }
    if !gathered.is_empty() {
        super::BLOCK.with(|b| b.set(gathered));
    }
}

/// Where a finished tile goes.
struct Finish<'a> {
    sink: &'a Sink<'a>,
    /// The tile's CW biases.
    bias: &'a [f32],
    ch0: usize,
    c_out: usize,
    plane: usize,
    p0: usize,
}

impl Finish<'_> {
    /// Writes `sums[x][c]` (bias added) as output channel `ch0 + c`, pixel `p0 + x`, with
    /// the residual and the activation.
    ///
    /// # Safety
    /// The sink's output (and residual) hold channel `c_out − 1`'s plane.
    unsafe fn write(&self, sums: &[[f32; CW]]) {
        let px = sums.len();
        let channels = CW.min(self.c_out - self.ch0);
        for c in 0..channels {
            let at = (self.ch0 + c) * self.plane + self.p0;
            let res = self.sink.residual.map(|r| &r[at..at + px]);
            for (x, sums) in sums.iter().enumerate() {
                let mut v = sums[c];
                if let Some(r) = res {
                    v += r[x];
                }
                // SAFETY: `at + x` is an output pixel of this tile (the caller's contract).
                unsafe { *self.sink.out.add(at + x) = self.sink.act.scalar(v) };
            }
        }
    }
}

/// Which block of `k` a call computes.
#[derive(Clone, Copy)]
struct Step {
    /// The first: the sums start at zero (else from `sums`).
    first: bool,
    /// The last: the tile is finished (else its sums are kept in `sums`).
    last: bool,
}

/// One tile for one block of `k`: `px` pixels from `a` (row `kk` at `a + kk·stride`) times
/// `k` rows of CW weights from `w`, added to `sums`, or finished after the last block.
///
/// # Safety
/// AVX-512F; `a` and `w` hold what they are said to.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: *const f32,
    stride: usize,
    w: *const f32,
    k: usize,
    px: usize,
    sums: &mut [[f32; CW]; PX],
    step: Step,
    f: &Finish,
) {
    macro_rules! dispatch {
        ($($n:literal)*) => {
            match px {
                $($n => unsafe { micro::<$n>(a, stride, w, k, sums, step, f) },)*
                _ => unreachable!("a pixel tile holds 1 to {PX} pixels"),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    _a: *const f32,
    _s: usize,
    _w: *const f32,
    _k: usize,
    _px: usize,
    _sums: &mut [[f32; CW]; PX],
    _step: Step,
    _f: &Finish,
) {
    unreachable!("the packed kernel is only chosen on x86-64 with AVX-512F")
}

/// `sums[x][c] (+)= Σ_kk w[kk][c] · a[kk][x]` for `c < CW`, `x < P`, finished after the
/// last block.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn micro<const P: usize>(
    a: *const f32,
    stride: usize,
    w: *const f32,
    k: usize,
    sums: &mut [[f32; CW]; PX],
    step: Step,
    f: &Finish,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; P];
    if !step.first {
        for (acc, sums) in acc.iter_mut().zip(sums.iter()) {
            acc[0] = _mm512_loadu_ps(sums.as_ptr());
            acc[1] = _mm512_loadu_ps(sums.as_ptr().add(16));
        }
    }
    let (mut a, mut w) = (a, w);
    for _ in 0..k {
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(WEIGHTS_AHEAD * CW).cast());
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(WEIGHTS_AHEAD * CW + 16).cast());
        // The next block's row into L2: a pass at batch 1 reads these weights once, from
        // memory, and a row serves at most 12 pixels — too little work to wait out memory's
        // latency at 16 rows ahead (cold 1×1 layers on 7×7 planes ran 10–15 % slower).
        // Past a channel tile's last block it fetches the next channel tile's first rows, or
        // nothing (past the weights' end).
        _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(KB * CW).cast());
        _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(KB * CW + 16).cast());
        let w0 = _mm512_loadu_ps(w);
        let w1 = _mm512_loadu_ps(w.add(16));
        for (x, acc) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*a.add(x));
            acc[0] = _mm512_fmadd_ps(w0, b, acc[0]);
            acc[1] = _mm512_fmadd_ps(w1, b, acc[1]);
        }
        // Past the last row these point beyond the data and are never read.
        a = a.wrapping_add(stride);
        w = w.wrapping_add(CW);
    }
    let (b0, b1) = if step.last {
        (
            _mm512_loadu_ps(f.bias.as_ptr()),
            _mm512_loadu_ps(f.bias.as_ptr().add(16)),
        )
    } else {
        (_mm512_setzero_ps(), _mm512_setzero_ps())
    };
    for (acc, sums) in acc.iter().zip(sums.iter_mut()) {
        _mm512_storeu_ps(sums.as_mut_ptr(), _mm512_add_ps(acc[0], b0));
        _mm512_storeu_ps(sums.as_mut_ptr().add(16), _mm512_add_ps(acc[1], b1));
    }
    if step.last {
        // SAFETY: the caller's contract.
        unsafe { f.write(&sums[..P]) };
    }
}
