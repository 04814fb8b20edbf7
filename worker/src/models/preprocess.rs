//! Image → input-tensor preprocessing, one recipe per weight family.
//!
//! A [`Preprocess`] is the eval transform the weights were trained with:
//! resize the shorter side (torchvision `Resize(int)` semantics, the longer
//! side truncated), centre-crop a square (torchvision's rounding), then map
//! 0..255 pixels to the network's input range. It is not data augmentation
//! and does not batch; [`crate::models::Model::classify`] stacks the results.

use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::DynamicImage;

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
    fn filter(self) -> FilterType {
        match self {
            Resample::Bilinear => FilterType::Triangle,
            Resample::Bicubic => FilterType::CatmullRom,
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
        let rgb = image.to_rgb8();
        let resized = if (rw, rh) == (w, h) {
            rgb
        } else {
            image::imageops::resize(&rgb, rw, rh, self.resample.filter())
        };
        let (left, top) = (crop_offset(rw, self.crop), crop_offset(rh, self.crop));
        let cropped =
            image::imageops::crop_imm(&resized, left, top, self.crop, self.crop).to_image();
        let side = self.crop as usize;
        let hwc = Tensor::from_vec(cropped.into_raw(), (side, side, 3), device)?;
        let chw = hwc.to_dtype(DType::F32)?.permute((2, 0, 1))?;
        let coeff = self.normalize.coefficients();
        let mul = Tensor::from_iter(coeff.iter().map(|c| c.0), device)?.reshape((3, 1, 1))?;
        let add = Tensor::from_iter(coeff.iter().map(|c| c.1), device)?.reshape((3, 1, 1))?;
        Ok(chw.broadcast_mul(&mul)?.broadcast_add(&add)?.contiguous()?)
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
    use image::{Rgb, RgbImage};

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
