//! Convolutions with no gathering: the input copied once into zero-padded planes that the
//! microkernel reads in place, for stride-1 kernels larger than 1×1 and for strided ones;
//! and the same layout as what the other paths gather their panels from ([`Padded`]).
//!
//! Output pixel `(y, x)` is computed at grid position `y·pitch + x`. At stride 1 the input
//! is one zero-padded plane per channel, and tap `(i, j)`'s pixels for a run of grid
//! positions are that plane's floats from `i·pitch + j` on, contiguous. At stride `s` the
//! padded input is split into its stride phases first — phase `(a, b)` holds the padded
//! rows `≡ a` and columns `≡ b` (mod `s`) — and tap `(i, j)` reads phase `(i mod s, j mod
//! s)` from `(i div s)·pitch + j div s` on: contiguous again, every output's tap one float
//! after its left neighbour's. Either way a panel of 48 positions is read in place, one
//! segment of the microkernel's rows per tap (the filter's `k` is tap-major), every input
//! channel's plane one stride apart; nothing is gathered per panel, and each input float
//! is copied once per call.
//!
//! A row's right padding and the next row's left padding are the same zeros ([`Layout`]),
//! so a 3×3 layer's rows are `w + 1` apart; the `pitch − ow` positions at the end of each
//! row are computed and dropped (their lanes are compressed out on the store).

use std::cell::Cell;

use rayon::prelude::*;

use super::{
    copy_stride2, micro_for, Dest, Epilogue, Geometry, PackedFilter, Panel, Pixels, Plan, Sink, KC,
    MC, MR, NR,
};
use crate::kernels::Window;

/// The grid computes dropped positions at the end of each output row (its pitch less its
/// width): taken while, with the last panel's, they leave at most this many vector lanes
/// (21/20) for each the gathered path computes. Measured one layer at a time here (one
/// thread, GFLOP/s gathered → grid): 1.026 times the lanes (35×35, 3×3) 91.6 → 103.7,
/// 1.041 (28×28) 97.6 → 105.1, 1.053 (17×17) 94.8 → 93.3, 1.077 (14×14) 94.9 → 90.4, 1.25
/// (8×8) 101.4 → 84.7: gathering costs ~5–10 % of a layer, the lanes the rest.
const LANES_MORE: (usize, usize) = (21, 20);

/// Fewest input channels of a strided layer on the grid: a tap's segment is one row per
/// channel, and the microkernel's turn per segment costs more than gathering saves on a
/// few (a 7×7 stride-2 layer on RGB measured 62–67 GFLOP/s here against 63–78 gathered).
const STRIDED_MIN_CHANNELS: usize = 16;

thread_local! {
    /// A call's input laid out ([`Padded`]), kept by the calling thread.
    static PADDED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Whether a call takes the grid path: a stride-1 kernel larger than 1×1 (a 1×1 one reads
/// its input in place as it is) or a strided kernel on at least [`STRIDED_MIN_CHANNELS`]
/// channels, on images with panels of their own (small images of a batch share panels
/// instead), while the rows' dropped positions are few ([`LANES_MORE`]).
pub(super) fn fits(n: usize, c: usize, (h, w): (usize, usize), win: Window) -> bool {
    let plane = win.out.0 * win.out.1;
    if plane == 0 || h == 0 || w == 0 || win.stride == 0 || (n > 1 && plane <= MC) {
        return false;
    }
    if win.stride == 1 && win.kernel.0 * win.kernel.1 == 1
        || win.stride > 1 && c < STRIDED_MIN_CHANNELS
    {
        return false;
    }
    // The grid's panels cover `positions` per image, the gathered ones `plane`: both in
    // whole vectors.
    let positions = (win.out.0 - 1) * Layout::new(w, win).pitch + win.out.1;
    positions.next_multiple_of(16) * LANES_MORE.1 <= plane.next_multiple_of(16) * LANES_MORE.0
}

/// Most floats of one image laid out ([`Padded`]): a vector's lanes are `i32` offsets from
/// its first, and its 16 pixels lie in at most 16 images (`16 · 2²⁷ = 2³¹`).
pub(super) const MAX_IMAGE: usize = 1 << 27;

/// Whether one image of `c × h × w` under `win` is at most [`MAX_IMAGE`] floats laid out.
pub(super) fn image_fits(c: usize, (h, w): (usize, usize), win: Window) -> bool {
    let floats = if win.is_pointwise(h, w) {
        c.checked_mul(h * w)
    } else {
        let layout = Layout::new(w, win);
        layout.planes(c).checked_mul(layout.plane)
    };
    floats.is_some_and(|f| f <= MAX_IMAGE)
}

/// How a call's input is laid out: per stride phase `(a, b)` — `a < phases.0`, `b <
/// phases.1` — one plane per channel, of `rows` rows `pitch` apart. Phase row `ρ` of phase
/// `a` is the padded input's row `a + s·ρ`; phase column `χ` of phase `b` its column
/// `b + s·χ`, which holds the input's column `b + s·χ − left` for `χ` in `columns[b]` and
/// a zero elsewhere.
#[derive(Debug)]
struct Layout {
    phases: (usize, usize),
    rows: usize,
    pitch: usize,
    columns: Vec<(usize, usize)>,
    /// Floats from one plane to the next: at least the last row's reads, an odd number of
    /// cache lines (rows of `k`, one plane apart, then fall in every set of the L1 cache
    /// instead of a few — a 16×16 plane is exactly 1 KiB).
    plane: usize,
}

impl Layout {
    /// The layout of inputs `w` columns wide under `win`.
    fn new(w: usize, win: Window) -> Layout {
        let s = win.stride;
        let (kh, kw) = win.kernel;
        let (oh, ow) = win.out;
        let left = win.pad_before.1;
        let phases = (s.min(kh), s.min(kw));
        let rows = oh + (kh - 1) / s;
        // Phase `b`'s columns that its taps (`j ≡ b`) read, and which of them hold input.
        let read = |b: usize| ow + (kw - 1 - b) / s;
        let columns: Vec<(usize, usize)> = (0..phases.1)
            .map(|b| {
                let lo = left.saturating_sub(b).div_ceil(s).min(read(b));
                let hi = (w + left).saturating_sub(b).div_ceil(s).min(read(b));
                (lo, hi.max(lo))
            })
            .collect();
        // Past the pitch a row's reads are the next row's first columns: zeros on both
        // sides when the pitch is at least `hi` (no input there in this row) and at least
        // `read − lo` (none there in the next). A 3×3 stride-1 layer: `w + 1`, not `w + 2`.
        let pitch = columns
            .iter()
            .enumerate()
            .map(|(b, &(lo, hi))| hi.max(read(b) - lo))
            .fold(ow, usize::max);
        // The last row's taps read `read(0)` columns from its start, past `rows·pitch` when
        // rows share their padding: zeros there.
        let extent = (rows * pitch).max((rows - 1) * pitch + read(0));
        Layout {
            phases,
            rows,
            pitch,
            columns,
            plane: extent.next_multiple_of(16) | 16,
        }
    }

    /// Planes per image: one per phase and channel.
    fn planes(&self, c: usize) -> usize {
        self.phases.0 * self.phases.1 * c
    }

    /// Where tap `(i, j)` of channel 0 starts, from an image's first plane.
    fn tap(&self, (i, j): (usize, usize), s: usize, c: usize) -> usize {
        let phase = (i % s) * self.phases.1 + j % s;
        phase * c * self.plane + (i / s) * self.pitch + j / s
    }

    /// Fills `dst` (one plane) with phase `(a, b)` of `src`, one channel's `h × w` input.
    fn fill(
        &self,
        dst: &mut [f32],
        src: &[f32],
        (a, b): (usize, usize),
        (h, w): (usize, usize),
        win: Window,
    ) {
        let s = win.stride;
        let (top, left) = win.pad_before;
        let (lo, hi) = self.columns[b];
        let (rows, tail) = dst.split_at_mut(self.rows * self.pitch);
        tail.fill(0.0);
        for (r, row) in rows.chunks_exact_mut(self.pitch).enumerate() {
            let Some(iy) = (a + s * r).checked_sub(top).filter(|&iy| iy < h) else {
                row.fill(0.0);
                continue;
            };
            let src = &src[iy * w..(iy + 1) * w];
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
            if hi == lo {
                continue;
            }
            // The input column of phase column `lo` (at least 0 by `lo`'s bound, which only
            // the columns read can cut short, and then `hi = lo`).
            let x0 = b + s * lo - left;
            match s {
                1 => row[lo..hi].copy_from_slice(&src[x0..x0 + hi - lo]),
                2 => copy_stride2(&mut row[lo..hi], &src[x0..]),
                _ => {
                    for (m, o) in row[lo..hi].iter_mut().enumerate() {
                        *o = src[x0 + s * m];
                    }
                }
            }
        }
    }
}

/// A grid's positions as panels: full 48-wide ones, then one 16, 32 or 48 wide for the
/// rest (its lanes past the end are dropped on the store like the rows' extra columns).
fn grid_panels(total: usize) -> Vec<Panel> {
    (0..total)
        .step_by(MR)
        .map(|q0| {
            let valid = (total - q0).min(MR);
            Panel {
                q0,
                valid,
                width: valid.next_multiple_of(16),
            }
        })
        .collect()
}

/// A call's input laid out as the grid lays it out: what the grid path reads in place,
/// and what the gathered paths gather their panels from ([`Padded::gather`]) — every tap
/// of every output pixel a fixed offset from its channel's plane, so a panel's lanes need
/// no per-row bookkeeping. A 1×1 stride-1 layer's input is that layout already (planes
/// `h·w` apart, rows `w`): it is borrowed, not copied; any other is copied into the
/// calling thread's buffer, given back by [`Padded::finish`].
pub(super) struct Padded<'a> {
    layout: Layout,
    floats: Floats<'a>,
    /// Floats per image: a plane per phase and channel.
    per_image: usize,
    /// Where each row of the im2col matrix (tap-major: tap `k / C`, channel `k mod C`)
    /// starts, for output pixel 0.
    rows: Vec<usize>,
    g: Geometry,
}

/// Where a [`Padded`] input's floats are.
enum Floats<'a> {
    Input(&'a [f32]),
    /// The calling thread's buffer: the planes, then [`MR`] zeros.
    Copied(Vec<f32>),
}

/// How one vector of a panel's 16 lanes is fetched from a [`Padded`] input per row of `k`.
#[derive(Clone, Copy)]
enum Fetch {
    /// Lanes `0..n` are the `n` floats from the vector's first one: one masked load.
    Run,
    /// Every lane lies in the 32 floats from the first one (a panel's vector across a row
    /// end of the padded planes): two loads and a permute.
    Near,
    /// Anything else (a vector across two images): a gather.
    Far,
}

/// Where one panel's lanes are in a [`Padded`] input, per vector of 16: its first lane's
/// offset (from a row of `k`'s start), how it is fetched, the lanes' offsets from the
/// first, and the panel's real lanes (the rest come out zero).
pub(super) struct PanelLanes {
    vectors: Vec<(usize, Fetch, [i32; 16], u16)>,
}

impl<'a> Padded<'a> {
    /// `xs`, `n` images of `g`'s input, laid out (copied in parallel unless 1×1
    /// stride 1). An image must be at most [`MAX_IMAGE`] floats laid out ([`image_fits`]).
    pub(super) fn new(xs: &'a [f32], n: usize, g: &Geometry) -> Padded<'a> {
        let (c, h, w, win) = (g.c, g.h, g.w, g.win);
        debug_assert!(image_fits(c, (h, w), win));
        if win.is_pointwise(h, w) {
            return Padded {
                layout: Layout {
                    phases: (1, 1),
                    rows: h,
                    pitch: w,
                    columns: vec![(0, w)],
                    plane: h * w,
                },
                floats: Floats::Input(xs),
                per_image: c * h * w,
                rows: (0..c).map(|k| k * h * w).collect(),
                g: *g,
            };
        }
        let layout = Layout::new(w, win);
        let per_image = layout.planes(c) * layout.plane;
        // Past the last plane: what a panel's last vector reads past its reads (up to 31
        // floats when permuting, dropped lanes all), zeros.
        let len = n * per_image + MR;
        let mut buf = PADDED.with(|p| p.take());
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        buf[n * per_image..len].fill(0.0);
        let phases = layout.phases.0 * layout.phases.1;
        buf[..n * per_image]
            .par_chunks_mut(layout.plane)
            .enumerate()
            .for_each(|(i, dst)| {
                // Planes are `[image][phase][channel]`.
                let (image, phase, channel) = (i / (phases * c), i / c % phases, i % c);
                let src = &xs[(image * c + channel) * h * w..][..h * w];
                let ab = (phase / layout.phases.1, phase % layout.phases.1);
                layout.fill(dst, src, ab, (h, w), win);
            });
        let (kh, kw) = win.kernel;
        let rows = (0..kh * kw)
            .flat_map(|t| {
                let tap = layout.tap((t / kw, t % kw), win.stride, c);
                (0..c).map(move |ch| tap + ch * layout.plane)
            })
            .collect();
        Padded {
            layout,
            floats: Floats::Copied(buf),
            per_image,
            rows,
            g: *g,
        }
    }

    /// Gives a copy's buffer back to the calling thread.
    pub(super) fn finish(self) {
        if let Floats::Copied(buf) = self.floats {
            PADDED.with(|p| p.set(buf));
        }
    }

    fn floats(&self) -> &[f32] {
        match &self.floats {
            Floats::Input(xs) => xs,
            Floats::Copied(buf) => buf,
        }
    }

    /// `panel`'s lanes in this input.
    pub(super) fn lanes(&self, panel: Panel) -> PanelLanes {
        let (ow, plane) = (self.g.win.out.1, self.g.plane());
        let mut vectors = vec![(0, Fetch::Run, [0i32; 16], 0u16); panel.width / 16];
        // Where output pixel `q0` (`image·P + p`) reads its tap `(0, 0)` of channel 0; then
        // pixel by pixel.
        let (mut image, p) = (panel.q0 / plane, panel.q0 % plane);
        let (mut p, mut oy, mut ox) = (p, p / ow, p % ow);
        let mut offsets = [0usize; 16];
        for (v, (first, fetch, idx, mask)) in vectors.iter_mut().enumerate() {
            let real = panel.valid.saturating_sub(16 * v).min(16);
            for o in &mut offsets[..real] {
                *o = image * self.per_image + oy * self.layout.pitch + ox;
                (p, ox) = (p + 1, ox + 1);
                if ox == ow {
                    (oy, ox) = (oy + 1, 0);
                }
                if p == plane {
                    (image, p, oy, ox) = (image + 1, 0, 0, 0);
                }
            }
            let offsets = &offsets[..real];
            let Some(&start) = offsets.first() else {
                continue;
            };
            *first = start;
            // Offsets only grow along a panel (pixels in order, images in order), and the
            // vector's pixels lie in at most 16 images of at most `MAX_IMAGE` floats:
            // `i32` holds them.
            let from = |o: usize| (o - start) as i32;
            *fetch = if offsets.iter().enumerate().all(|(l, &o)| o - start == l) {
                Fetch::Run
            } else if offsets.iter().all(|&o| o - start < 32)
                && matches!(self.floats, Floats::Copied(_))
            {
                // (Its second load may pass the planes' end: only a copy has zeros there.)
                Fetch::Near
            } else {
                Fetch::Far
            };
            for (l, &o) in offsets.iter().enumerate() {
                idx[l] = from(o);
                *mask |= 1 << l;
            }
        }
        PanelLanes { vectors }
    }

    /// Rows `k0..k0 + rows` of `lanes`' panel into `dst` (`rows × width`), zeros in the
    /// lanes past the panel's pixels.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `lanes` is of this input, `k0 + rows` at most the layer's `k`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather(
        &self,
        lanes: &PanelLanes,
        (k0, rows): (usize, usize),
        dst: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let width = lanes.vectors.len() * 16;
        let base = self.floats().as_ptr();
        for (row, k) in dst.chunks_exact_mut(width).zip(k0..k0 + rows) {
            let at = base.add(self.rows[k]);
            for (v, (first, fetch, idx, mask)) in lanes.vectors.iter().enumerate() {
                let (from, mask) = (at.add(*first), *mask);
                // SAFETY: every real lane's float is in the planes; a run's load is masked
                // to them, a near vector's second load stays within a copy's zero tail.
                let x = match fetch {
                    Fetch::Run => _mm512_maskz_loadu_ps(mask, from),
                    Fetch::Near => {
                        let idx = _mm512_loadu_si512(idx.as_ptr().cast());
                        let (lo, hi) = (_mm512_loadu_ps(from), _mm512_loadu_ps(from.add(16)));
                        _mm512_maskz_permutex2var_ps(mask, lo, idx, hi)
                    }
                    Fetch::Far => {
                        let idx = _mm512_loadu_si512(idx.as_ptr().cast());
                        _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, from)
                    }
                };
                _mm512_storeu_ps(row.as_mut_ptr().add(16 * v), x);
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn gather(&self, _: &PanelLanes, _: (usize, usize), _: &mut [f32]) {
        unreachable!("the packed kernel is only chosen on x86-64 with AVX-512F")
    }
}

/// The convolution on the grid (see the module's comment).
///
/// # Safety
/// As [`super::conv`]: `sink` writes to its `out`, without merged sums; the call [`fits`].
pub(super) unsafe fn conv(xs: &[f32], n: usize, g: &Geometry, filter: &PackedFilter, sink: &Sink) {
    let (c, win) = (g.c, g.win);
    let (kh, kw) = win.kernel;
    let (oh, ow) = win.out;
    let padded = Padded::new(xs, n, g);
    let layout = &padded.layout;
    let (wp, padded_plane, per_image) = (layout.pitch, layout.plane, padded.per_image);
    let plane = g.plane();
    // Grid positions per image: the last row's extra positions are not needed.
    let positions = (oh - 1) * wp + ow;
    let panels: Vec<Panel> = (0..n)
        .flat_map(|image| {
            grid_panels(positions).into_iter().map(move |p| Panel {
                q0: image * positions + p.q0,
                ..p
            })
        })
        .collect();
    let threads = rayon::current_num_threads().max(1);
    let n_panels = filter.c_out.div_ceil(NR);
    let plan = Plan::new(&panels, filter.c_out, n * plane, threads);
    let items = plan.items(n_panels, threads, plan.split);
    // Blocks of `k` (tap-major, as the filter is packed): whole taps of all channels up to
    // KC rows, or one tap's channels in parts of at most KC. Each block lists where its
    // segments start from an image's first plane: where their first rows of `k` start.
    let taps = kh * kw;
    let mut k_blocks: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    if c <= KC {
        let n_blocks = taps.div_ceil((KC / c).max(1));
        let per = taps.div_ceil(n_blocks);
        for t0 in (0..taps).step_by(per) {
            let starts = (t0..(t0 + per).min(taps))
                .map(|t| padded.rows[t * c])
                .collect();
            k_blocks.push((t0 * c, c, starts));
        }
    } else {
        let size = c.div_ceil(c.div_ceil(KC));
        for t in 0..taps {
            for c0 in (0..c).step_by(size) {
                let rows = size.min(c - c0);
                k_blocks.push((t * c + c0, rows, vec![padded.rows[t * c + c0]]));
            }
        }
    }
    let k = filter.k();
    let input: &[f32] = padded.floats();
    let run = |(b, channel_panels): &(usize, std::ops::Range<usize>)| {
        let block_panels = &panels[plan.blocks[*b].clone()];
        // Each panel's image and, per vector, where its kept lanes go in an output plane.
        let places: Vec<(usize, [(usize, u16); 3])> = block_panels
            .iter()
            .map(|panel| {
                let (image, p0) = (panel.q0 / positions, panel.q0 % positions);
                let mut lanes = [(0, 0u16); 3];
                for (v, (at, mask)) in lanes.iter_mut().enumerate().take(panel.width / 16) {
                    for l in (0..16).rev() {
                        let x = 16 * v + l;
                        let q = p0 + x;
                        if x < panel.valid && q % wp < ow {
                            *mask |= 1 << l;
                            *at = q / wp * ow + q % wp;
                        }
                    }
                }
                (image, lanes)
            })
            .collect();
        for (i, (k0, rows, starts)) in k_blocks.iter().enumerate() {
            let (first, last) = (i == 0, i + 1 == k_blocks.len());
            let all_rows = rows * starts.len();
            for cp in channel_panels.clone() {
                let ch0 = cp * NR;
                let weights = &filter.panels[(cp * k + k0) * NR..(cp * k + k0 + all_rows) * NR];
                for (panel, &(image, lanes)) in block_panels.iter().zip(&places) {
                    let p0 = panel.q0 % positions;
                    let pixels = Pixels {
                        at: input.as_ptr().wrapping_add(image * per_image + p0),
                        stride: padded_plane,
                        rows: *rows,
                        starts,
                    };
                    let at = (image * filter.c_out + ch0) * plane;
                    let dest = Dest {
                        c: sink.out.wrapping_add(at),
                        ldc: plane,
                        rows: NR.min(filter.c_out - ch0),
                        lanes: Some(lanes),
                    };
                    let epilogue = last.then(|| Epilogue {
                        bias: sink.bias[ch0..ch0 + NR].as_ptr(),
                        residual: sink.residual.map(|res| res.as_ptr().wrapping_add(at)),
                        act: sink.act,
                    });
                    // SAFETY: AVX-512F is present (the caller's contract); every segment's
                    // rows lie in the padded buffer (with its tail), the kept lanes of the
                    // tile's rows are output pixels of this image and channel range, which
                    // no other task writes.
                    unsafe { micro_for(panel.width, pixels, weights, dest, !first, epilogue) };
                }
            }
        }
    };
    if items.len() == 1 || threads == 1 {
        items.iter().for_each(run);
    } else {
        items.par_iter().for_each(run);
    }
    padded.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read of the grid — tap `(i, j)` of output `(y, x)`, at `tap(i, j) + y·pitch +
    /// x` from an image's first plane — finds the padded input's float there: the input's
    /// `(y·s + i − top, x·s + j − left)` when inside it, else a zero. Filled as
    /// [`Layout::fill`] fills the planes (one channel), each place checked against every
    /// read of it, for strides 1, 2 and 3, padding on either side or none, more padding
    /// than kernel.
    #[test]
    fn every_read_of_the_grid_finds_its_input_or_a_zero() {
        // (input h × w, kernel, stride, padding (top, left), output)
        let cases = [
            ((6, 56), (3, 3), 1, (1, 1), (6, 56)),
            ((5, 17), (1, 7), 1, (0, 3), (5, 17)),
            ((7, 7), (7, 1), 1, (3, 0), (7, 7)),
            ((6, 12), (3, 3), 1, (0, 2), (4, 14)),
            ((6, 12), (3, 3), 1, (0, 0), (4, 10)),
            ((8, 10), (4, 4), 1, (1, 1), (7, 9)),
            ((9, 9), (1, 1), 1, (1, 1), (11, 11)),
            // Padding past every column read: no input in any row.
            ((4, 4), (3, 3), 1, (1, 9), (4, 2)),
            ((20, 20), (7, 7), 2, (3, 3), (10, 10)),
            ((14, 15), (3, 3), 2, (1, 1), (7, 8)),
            ((13, 13), (3, 3), 2, (0, 0), (6, 6)),
            ((12, 12), (3, 3), 2, (0, 0), (6, 6)),
            ((12, 13), (1, 1), 2, (0, 0), (6, 7)),
            ((10, 11), (5, 4), 3, (2, 1), (4, 4)),
        ];
        for ((h, w), (kh, kw), s, (top, left), (oh, ow)) in cases {
            let win = Window {
                kernel: (kh, kw),
                stride: s,
                pad_before: (top, left),
                out: (oh, ow),
            };
            let layout = Layout::new(w, win);
            assert!(layout.pitch >= ow, "{win:?}: pitch {}", layout.pitch);
            // The input's floats are their own index + 1: never zero.
            let src: Vec<f32> = (0..h * w).map(|i| (i + 1) as f32).collect();
            let phases = layout.phases.0 * layout.phases.1;
            let mut planes = vec![f32::NAN; phases * layout.plane + MR];
            for (phase, dst) in planes.chunks_exact_mut(layout.plane).enumerate() {
                let ab = (phase / layout.phases.1, phase % layout.phases.1);
                layout.fill(dst, &src, ab, (h, w), win);
            }
            for (y, x, i, j) in (0..oh * ow * kh * kw)
                .map(|q| (q / (ow * kh * kw), q / (kh * kw) % ow, q / kw % kh, q % kw))
            {
                let iy = (y * s + i).checked_sub(top).filter(|&iy| iy < h);
                let ix = (x * s + j).checked_sub(left).filter(|&ix| ix < w);
                let want = iy.zip(ix).map_or(0.0, |(iy, ix)| src[iy * w + ix]);
                let got = planes[layout.tap((i, j), s, 1) + y * layout.pitch + x];
                assert_eq!(
                    got, want,
                    "{win:?}: output ({y}, {x}) tap ({i}, {j}), pitch {}",
                    layout.pitch
                );
            }
        }
        // Shared padding: a 3×3 layer's rows one position longer than its output, not two.
        let same = |w: usize, k: usize, s: usize, pad: usize| {
            let out = (w + 2 * pad - k) / s + 1;
            let win = Window {
                kernel: (k, k),
                stride: s,
                pad_before: (pad, pad),
                out: (out, out),
            };
            Layout::new(w, win).pitch
        };
        assert_eq!(same(56, 3, 1, 1), 57);
        assert_eq!(same(35, 5, 1, 2), 37);
        assert_eq!(same(224, 7, 2, 3), 114);
        assert_eq!(same(56, 3, 2, 1), 29);
        assert_eq!(same(56, 1, 2, 0), 28);
    }

    /// An image whose laid-out floats a vector's `i32` offsets could not reach is refused
    /// (the convolution then errs instead of reading astray); the models' layers are taken.
    #[test]
    fn images_past_the_offsets_reach_are_refused() {
        let win = |k: usize, s: usize, out: usize| Window {
            kernel: (k, k),
            stride: s,
            pad_before: (k / 2, k / 2),
            out: (out, out),
        };
        assert!(image_fits(3, (224, 224), win(7, 2, 112)));
        assert!(image_fits(2048, (7, 7), win(1, 1, 7)));
        assert!(image_fits(512, (14, 14), win(3, 2, 7)));
        // 2²⁷ floats exactly as a 1×1 layer's input; one channel more is past it.
        assert!(image_fits(1 << 11, (256, 256), win(1, 1, 256)));
        assert!(!image_fits((1 << 11) + 1, (256, 256), win(1, 1, 256)));
        assert!(!image_fits(64, (2048, 2048), win(3, 1, 2048)));
    }
}
