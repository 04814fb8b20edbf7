//! Image → input-tensor preprocessing, one recipe per weight family.
//!
//! A [`Preprocess`] is the eval transform the weights were trained with:
//! resize the shorter side (torchvision `Resize(int)` semantics, the longer
//! side truncated), centre-crop a square (torchvision's rounding), then map
//! 0..255 pixels to the network's input range. It is not data augmentation
//! and does not batch; [`crate::Model::classify`] stacks the results.

use std::borrow::Cow;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};
use rayon::prelude::*;

use super::error::{ModelError, Result};

/// ImageNet channel means (RGB, on a 0..1 scale) used by torchvision weights.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB, on a 0..1 scale).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Longest side a resized image may have; refuses absurd aspect ratios
/// (e.g. 1×100000) instead of allocating gigabytes.
pub const MAX_RESIZED_SIDE: u32 = 16_384;

/// Resampling filter for the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// Bilinear (torchvision's default for its classification weights).
    Bilinear,
    /// Bicubic (Catmull-Rom, PIL's `BICUBIC`), used for EfficientNet-Lite.
    Bicubic,
}

impl Resample {
    /// The filter's support radius and its kernel, as `image::imageops` defines them.
    fn kernel(self) -> (f32, fn(f32) -> f32) {
        match self {
            Resample::Bilinear => (1.0, triangle_kernel),
            Resample::Bicubic => (2.0, catmull_rom_kernel),
        }
    }
}

/// `image::imageops`' triangle (bilinear) kernel.
fn triangle_kernel(x: f32) -> f32 {
    if x.abs() < 1.0 {
        1.0 - x.abs()
    } else {
        0.0
    }
}

/// `image::imageops`' Catmull-Rom kernel (`bc_cubic_spline(x, 0, 0.5)`), term for term.
fn catmull_rom_kernel(x: f32) -> f32 {
    let (b, c) = (0.0f32, 0.5f32);
    let a = x.abs();
    let k = if a < 1.0 {
        (12.0 - 9.0 * b - 6.0 * c) * a.powi(3)
            + (-18.0 + 12.0 * b + 6.0 * c) * a.powi(2)
            + (6.0 - 2.0 * b)
    } else if a < 2.0 {
        (-b - 6.0 * c) * a.powi(3)
            + (6.0 * b + 30.0 * c) * a.powi(2)
            + (-12.0 * b - 48.0 * c) * a
            + (8.0 * b + 24.0 * c)
    } else {
        0.0
    };
    k / 6.0
}

/// The resampling of one axis for a window of output indices: for each, the
/// first input index and the normalised weights of the inputs from there on.
///
/// Computed exactly as `image::imageops::resize` does (same f32 operations in
/// the same order), so that [`resample_crop`] reproduces `resize` followed by
/// `crop_imm` bit for bit while computing only the cropped pixels.
struct Taps(Vec<(usize, Vec<f32>)>);

impl Taps {
    /// Output indices `first..first + count` of a resize from `input` to `output`.
    fn new(input: u32, output: u32, resample: Resample, first: u32, count: u32) -> Taps {
        let (support, kernel) = resample.kernel();
        let ratio = input as f32 / output as f32;
        let sratio = if ratio < 1.0 { 1.0 } else { ratio };
        let src_support = support * sratio;
        let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
        let taps = (first..first + count)
            .map(|out| {
                let center = (out as f32 + 0.5) * ratio;
                let left = clamp((center - src_support).floor() as i64, 0, input as i64 - 1);
                let right = clamp((center + src_support).ceil() as i64, left + 1, input as i64);
                let center = center - 0.5;
                let mut weights: Vec<f32> = (left..right)
                    .map(|i| kernel((i as f32 - center) / sratio))
                    .collect();
                let sum = weights.iter().fold(0.0f32, |s, w| s + w);
                weights.iter_mut().for_each(|w| *w /= sum);
                (left as usize, weights)
            })
            .collect();
        Taps(taps)
    }

    /// No resize: output `first + k` is input `first + k`.
    fn identity(first: u32, count: u32) -> Taps {
        Taps(
            (first..first + count)
                .map(|i| (i as usize, vec![1.0]))
                .collect(),
        )
    }

    /// The input indices any output reads: `lo..hi`.
    fn span(&self) -> (usize, usize) {
        let lo = self.0.iter().map(|t| t.0).min().unwrap_or(0);
        let hi = self.0.iter().map(|t| t.0 + t.1.len()).max().unwrap_or(lo);
        (lo, hi)
    }
}

/// Resample `rgb` to the crop window `rows × cols` — the vertical pass into f32,
/// then the horizontal pass rounded to u8, as `image::imageops::resize` does —
/// and return the normalised `(3, rows, cols)` planes, `x · m + a` per channel.
/// Output rows are computed in parallel on the current rayon pool.
fn resample_crop(rgb: &RgbImage, rows: &Taps, cols: &Taps, coeff: [(f32, f32); 3]) -> Vec<f32> {
    let width = rgb.width() as usize;
    let src = rgb.as_raw();
    let (x0, x1) = cols.span();
    let (out_h, out_w) = (rows.0.len(), cols.0.len());
    let mut hwc = vec![0f32; out_h * out_w * 3];
    hwc.par_chunks_mut(out_w * 3).zip(&rows.0).for_each_init(
        Vec::new,
        |line, (dst, (y, weights))| {
            let row = Row {
                src,
                width,
                y: *y,
                weights,
                x0,
                x1,
                cols: &cols.0,
            };
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { row.resample_avx2(line, dst) };
            }
            row.resample(line, dst)
        },
    );
    let plane = out_h * out_w;
    let mut chw = vec![0f32; 3 * plane];
    for (c, (m, a)) in coeff.iter().enumerate() {
        for (o, px) in chw[c * plane..(c + 1) * plane]
            .iter_mut()
            .zip(hwc.chunks_exact(3))
        {
            *o = px[c] * m + a;
        }
    }
    chw
}

/// One output row of [`resample_crop`]: what it reads.
struct Row<'a> {
    /// The source pixels (interleaved RGB) and their row length in pixels.
    src: &'a [u8],
    width: usize,
    /// The first input row and the vertical weights from there on.
    y: usize,
    weights: &'a [f32],
    /// The input columns `x0..x1` the crop needs.
    x0: usize,
    x1: usize,
    /// The horizontal taps of each output column.
    cols: &'a [(usize, Vec<f32>)],
}

impl Row<'_> {
    /// [`Row::resample`] compiled for AVX2 (wider vectors, rounding inline): not FMA, so
    /// every product and sum is rounded as in the portable build — the same results.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn resample_avx2(&self, line: &mut Vec<f32>, dst: &mut [f32]) {
        self.resample(line, dst)
    }

    /// The row (interleaved RGB, rounded to u8 values) into `dst`; `line` is scratch.
    #[inline(always)]
    fn resample(&self, line: &mut Vec<f32>, dst: &mut [f32]) {
        let Row {
            src,
            width,
            y,
            weights,
            x0,
            x1,
            cols,
        } = *self;
        // Vertical pass over the input columns the crop needs.
        line.clear();
        line.resize((x1 - x0) * 3, 0f32);
        for (i, w) in weights.iter().enumerate() {
            let start = ((y + i) * width + x0) * 3;
            let src_row = &src[start..start + (x1 - x0) * 3];
            for (t, p) in line.iter_mut().zip(src_row) {
                *t += *p as f32 * w;
            }
        }
        // Horizontal pass: the three channels side by side, each summed over the taps in
        // order.
        for (px, (x, weights)) in dst.chunks_exact_mut(3).zip(cols) {
            let taps = &line[(x - x0) * 3..(x - x0 + weights.len()) * 3];
            let mut t = [0f32; 3];
            for (rgb, w) in taps.chunks_exact(3).zip(weights) {
                for (t, v) in t.iter_mut().zip(rgb) {
                    *t += v * w;
                }
            }
            // `t` is finite: the same as `image`'s own clamp.
            for (out, t) in px.iter_mut().zip(t) {
                *out = t.clamp(0.0, 255.0).round();
            }
        }
    }
}

/// How 0..255 pixel values become network inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalize {
    /// `(x / 255 - mean[c]) / std[c]` per RGB channel.
    MeanStd { mean: [f32; 3], std: [f32; 3] },
    /// `(x - offset) / scale` for every channel (TF-Lite style, e.g. 127 / 128).
    Affine { offset: f32, scale: f32 },
}

impl Normalize {
    /// Per-channel `(multiplier, addend)` so that `input = x * m + a` for x in 0..255.
    fn coefficients(&self) -> [(f32, f32); 3] {
        match *self {
            Normalize::MeanStd { mean, std } => {
                std::array::from_fn(|c| (1.0 / (255.0 * std[c]), -mean[c] / std[c]))
            }
            Normalize::Affine { offset, scale } => [(1.0 / scale, -offset / scale); 3],
        }
    }
}

/// An eval-time preprocessing recipe: resize shorter side, centre crop, normalise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Target length of the shorter image side after resizing.
    pub resize_shorter: u32,
    /// Side of the square centre crop (the network input size).
    pub crop: u32,
    /// Resampling filter of the resize.
    pub resample: Resample,
    /// Pixel normalisation.
    pub normalize: Normalize,
}

impl Preprocess {
    /// torchvision's ImageNet eval transform: `Resize(resize)`, `CenterCrop(crop)`, mean/std.
    pub const fn imagenet(resize_shorter: u32, crop: u32) -> Self {
        Preprocess {
            resize_shorter,
            crop,
            resample: Resample::Bilinear,
            normalize: Normalize::MeanStd {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
        }
    }

    /// Turn one image into a `(3, crop, crop)` f32 tensor on `device`.
    pub fn apply(&self, image: &DynamicImage, device: &Device) -> Result<Tensor> {
        let (w, h) = (image.width(), image.height());
        if w == 0 || h == 0 {
            return Err(ModelError::InvalidInput(format!(
                "image has zero size ({w}x{h})"
            )));
        }
        if self.crop == 0 || self.crop > self.resize_shorter {
            return Err(ModelError::InvalidInput(format!(
                "crop {} must be in 1..={}",
                self.crop, self.resize_shorter
            )));
        }
        let (rw, rh) = resized_dims(w, h, self.resize_shorter);
        if rw.max(rh) > MAX_RESIZED_SIDE {
            return Err(ModelError::InvalidInput(format!(
                "image {w}x{h} is too elongated: resizing would make it {rw}x{rh}"
            )));
        }
        let rgb: Cow<'_, RgbImage> = match image {
            DynamicImage::ImageRgb8(rgb) => Cow::Borrowed(rgb),
            other => Cow::Owned(other.to_rgb8()),
        };
        let (left, top) = (crop_offset(rw, self.crop), crop_offset(rh, self.crop));
        let (cols, rows) = if (rw, rh) == (w, h) {
            (
                Taps::identity(left, self.crop),
                Taps::identity(top, self.crop),
            )
        } else {
            (
                Taps::new(w, rw, self.resample, left, self.crop),
                Taps::new(h, rh, self.resample, top, self.crop),
            )
        };
        let side = self.crop as usize;
        let chw = resample_crop(&rgb, &rows, &cols, self.normalize.coefficients());
        Ok(Tensor::from_vec(chw, (3, side, side), device)?)
    }

    /// Preprocess several images into one `(N, 3, crop, crop)` batch.
    pub fn apply_batch(&self, images: &[DynamicImage], device: &Device) -> Result<Tensor> {
        if images.is_empty() {
            return Err(ModelError::InvalidInput("empty image batch".into()));
        }
        let items = images
            .iter()
            .map(|img| self.apply(img, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&items, 0)?)
    }
}

/// torchvision `Resize(size)`: the shorter side becomes `size`, the longer one
/// `int(size * long / short)`.
pub fn resized_dims(w: u32, h: u32, size: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| ((size as u64 * long as u64) / short as u64).max(1) as u32;
    if w <= h {
        (size, scale(h, w))
    } else {
        (scale(w, h), size)
    }
}

/// torchvision `CenterCrop`: offset `int(round((len - crop) / 2))`, ties to even.
fn crop_offset(len: u32, crop: u32) -> u32 {
    (len.saturating_sub(crop) as f64 / 2.0).round_ties_even() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use image::imageops::FilterType;
    use image::{Rgb, Rgba, RgbaImage};

    /// The straightforward recipe: `image`'s full resize, crop, then tensor ops.
    fn reference(p: &Preprocess, image: &DynamicImage) -> Tensor {
        let dev = Device::Cpu;
        let (w, h) = (image.width(), image.height());
        let (rw, rh) = resized_dims(w, h, p.resize_shorter);
        let rgb = image.to_rgb8();
        let filter = match p.resample {
            Resample::Bilinear => FilterType::Triangle,
            Resample::Bicubic => FilterType::CatmullRom,
        };
        let resized = if (rw, rh) == (w, h) {
            rgb
        } else {
            image::imageops::resize(&rgb, rw, rh, filter)
        };
        let (left, top) = (crop_offset(rw, p.crop), crop_offset(rh, p.crop));
        let cropped = image::imageops::crop_imm(&resized, left, top, p.crop, p.crop).to_image();
        let side = p.crop as usize;
        let hwc = Tensor::from_vec(cropped.into_raw(), (side, side, 3), &dev).unwrap();
        let chw = hwc
            .to_dtype(DType::F32)
            .unwrap()
            .permute((2, 0, 1))
            .unwrap();
        let coeff = p.normalize.coefficients();
        let mul = Tensor::from_iter(coeff.iter().map(|c| c.0), &dev)
            .unwrap()
            .reshape((3, 1, 1))
            .unwrap();
        let add = Tensor::from_iter(coeff.iter().map(|c| c.1), &dev)
            .unwrap()
            .reshape((3, 1, 1))
            .unwrap();
        chw.broadcast_mul(&mul)
            .unwrap()
            .broadcast_add(&add)
            .unwrap()
            .contiguous()
            .unwrap()
    }

    /// A deterministic, busy test picture.
    fn noise(w: u32, h: u32) -> RgbImage {
        let mut state = 0x2545_f491_u32 ^ (w * 7919 + h);
        RgbImage::from_fn(w, h, |x, y| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = (state >> 24) as u8;
            Rgb([n, (x * 255 / w.max(1)) as u8, n.wrapping_add((y * 3) as u8)])
        })
    }

    /// The crop-only resampler must reproduce `image`'s resize + crop bit for bit.
    #[test]
    fn matches_full_resize_then_crop_exactly() {
        let samples = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"];
        let mut images: Vec<DynamicImage> = samples
            .iter()
            .map(|f| image::open(format!("{}/../samples/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap())
            .collect();
        for (w, h) in [
            (451, 300),
            (300, 451),
            (257, 256),
            (40, 30),
            (7, 5),
            (256, 256),
            (1000, 333),
        ] {
            images.push(DynamicImage::ImageRgb8(noise(w, h)));
        }
        // Another pixel format goes through `to_rgb8` first.
        images.push(DynamicImage::ImageRgba8(RgbaImage::from_fn(
            90,
            70,
            |x, y| Rgba([(x * 2) as u8, (y * 3) as u8, (x ^ y) as u8, 128]),
        )));
        let recipes = [
            Preprocess::imagenet(256, 224),
            Preprocess::imagenet(342, 299),
            Preprocess::imagenet(36, 32),
            Preprocess {
                resize_shorter: 256,
                crop: 224,
                resample: Resample::Bicubic,
                normalize: Normalize::Affine {
                    offset: 127.0,
                    scale: 128.0,
                },
            },
            Preprocess {
                resize_shorter: 5,
                crop: 5,
                resample: Resample::Bicubic,
                normalize: Normalize::Affine {
                    offset: 0.0,
                    scale: 1.0,
                },
            },
        ];
        for p in &recipes {
            for image in &images {
                let got = p.apply(image, &Device::Cpu).unwrap();
                let want = reference(p, image);
                let (got, want) = (
                    got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same && got.len() == want.len(),
                    "{}x{} with {p:?}",
                    image.width(),
                    image.height()
                );
            }
        }
    }

    #[test]
    fn resize_keeps_aspect_like_torchvision() {
        assert_eq!(resized_dims(451, 300, 256), (384, 256));
        assert_eq!(resized_dims(300, 451, 256), (256, 384));
        assert_eq!(resized_dims(400, 400, 342), (342, 342));
        assert_eq!(crop_offset(384, 224), 80);
        assert_eq!(crop_offset(225, 224), 0); // round(0.5) == 0
        assert_eq!(crop_offset(227, 224), 2); // round(1.5) == 2
    }

    #[test]
    fn constant_image_normalises_per_channel() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(300, 260, Rgb([255, 0, 128])));
        let t = Preprocess::imagenet(256, 224)
            .apply(&img, &Device::Cpu)
            .unwrap();
        assert_eq!(t.dims(), &[3, 224, 224]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let plane = 224 * 224;
        let expect = [
            (1.0 - 0.485) / 0.229,
            (0.0 - 0.456) / 0.224,
            (128.0 / 255.0 - 0.406) / 0.225,
        ];
        for c in 0..3 {
            for &x in &v[c * plane..(c + 1) * plane] {
                assert!(
                    (x - expect[c]).abs() < 1e-5,
                    "channel {c}: {x} vs {}",
                    expect[c]
                );
            }
        }
    }

    #[test]
    fn affine_normalisation_maps_0_255_to_about_pm1() {
        let p = Preprocess {
            resize_shorter: 8,
            crop: 8,
            resample: Resample::Bicubic,
            normalize: Normalize::Affine {
                offset: 127.0,
                scale: 128.0,
            },
        };
        let mut img = RgbImage::from_pixel(8, 8, Rgb([0, 127, 255]));
        img.put_pixel(0, 0, Rgb([255, 255, 255]));
        let t = p
            .apply(&DynamicImage::ImageRgb8(img), &Device::Cpu)
            .unwrap();
        let v = t.to_vec3::<f32>().unwrap();
        assert_eq!(v[0][0][0], 1.0);
        assert_eq!(v[0][3][3], -127.0 / 128.0);
        assert_eq!(v[1][3][3], 0.0);
        assert_eq!(v[2][3][3], 1.0);
    }

    #[test]
    fn centre_crop_takes_the_middle() {
        // 10x6 image, already at the target shorter side: only the crop acts.
        let mut img = RgbImage::from_pixel(10, 6, Rgb([0, 0, 0]));
        for y in 0..6 {
            img.put_pixel(2, y, Rgb([255, 255, 255])); // first column of the crop
        }
        let p = Preprocess {
            resize_shorter: 6,
            crop: 6,
            resample: Resample::Bilinear,
            normalize: Normalize::Affine {
                offset: 0.0,
                scale: 255.0,
            },
        };
        let v = p
            .apply(&DynamicImage::ImageRgb8(img), &Device::Cpu)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        for row in &v[0] {
            assert_eq!(row[0], 1.0);
            assert!(row[1..].iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn batch_stacks_and_rejects_empty() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(50, 40, Rgb([1, 2, 3])));
        let p = Preprocess::imagenet(36, 32);
        let b = p.apply_batch(&[img.clone(), img], &Device::Cpu).unwrap();
        assert_eq!(b.dims(), &[2, 3, 32, 32]);
        assert!(p.apply_batch(&[], &Device::Cpu).is_err());
        let empty = DynamicImage::ImageRgb8(RgbImage::new(0, 0));
        assert!(p.apply(&empty, &Device::Cpu).is_err());
        let sliver = DynamicImage::ImageRgb8(RgbImage::new(1, 1000));
        assert!(matches!(
            p.apply(&sliver, &Device::Cpu),
            Err(ModelError::InvalidInput(_))
        ));
    }
}
