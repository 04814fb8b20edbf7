//! [`Model`]: a loaded classifier with preprocessing, forward pass and top-k.
//!
//! This file ties an [`Arch`] to its network code, its weights source and its
//! preprocessing. It does not know where weights files come from (SDFS, hub,
//! local disk are the caller's business) and keeps no state between calls, so
//! one `Model` can serve concurrent requests (`Model: Send + Sync`).

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use image::DynamicImage;
use rayon::prelude::*;
use serde::Serialize;

use super::efficientnet_lite0::EfficientNetLite0;
use super::error::{ModelError, Result};
use super::hub::TensorNames;
use super::inception_v3::{self, InceptionV3};
use super::labels::{imagenet_label, NUM_CLASSES};
use super::resnet::{Depth, ResNet};
use super::synthetic::Synthetic;
use super::tensors::WeightSource;
use super::Arch;

/// Options for [`Model::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Inception V3 only: torchvision's `transform_input` (re-map ImageNet
    /// mean/std inputs to the (x − 0.5) / 0.5 range inside the network).
    /// `true` — the default — for torchvision's pretrained weights.
    pub transform_input: bool,
    /// Naming scheme of the tensors in the weights file.
    pub tensor_names: TensorNames,
    /// [`Arch::Synthetic`] only: the CPU milliseconds each image costs.
    pub synthetic_cost_ms: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            transform_input: true,
            tensor_names: TensorNames::Native,
            synthetic_cost_ms: 0,
        }
    }
}

/// One ranked class of a classification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// ImageNet-1k class index (0..1000).
    pub class_index: usize,
    /// Human-readable class name.
    pub label: &'static str,
    /// Softmax probability.
    pub probability: f32,
}

impl From<Prediction> for idunno_api::result::Class {
    /// A prediction as results and online answers carry it.
    fn from(p: Prediction) -> Self {
        idunno_api::result::Class {
            index: p.class_index,
            label: p.label.to_string(),
            probability: p.probability,
        }
    }
}

/// A network in two parts, so that a batch can run each part the way it runs fastest:
/// the early layers (large activations, few weights) image by image, side by side, each
/// image's activations staying in cache; the late layers (small planes, most of the
/// weights) on the whole batch at once, every weight loaded once for all its images — or
/// on groups of at most [`Network::late_group`] images.
pub(crate) trait Network: Send + Sync {
    /// The early layers, run on one image at a time.
    fn early(&self, xs: &Tensor) -> candle_core::Result<Tensor>;
    /// The rest, ending in the logits, run on the whole batch (or each group of it).
    fn late(&self, xs: &Tensor) -> candle_core::Result<Tensor>;
    /// The most images [`Network::late`] takes at once; a larger batch goes through it in
    /// groups of this many, one after the other. `None`: the whole batch.
    fn late_group(&self) -> Option<usize> {
        None
    }
}

/// A loaded image classifier (CPU, f32).
pub struct Model {
    arch: Arch,
    net: Box<dyn Network>,
    device: Device,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("arch", &self.arch).finish()
    }
}

/// Build `arch`'s network from a `VarBuilder` (shared by loading and by
/// [`Arch::tensor_specs`]).
pub(crate) fn build_net(
    arch: Arch,
    vb: VarBuilder<'static>,
    options: &LoadOptions,
) -> candle_core::Result<Box<dyn Network>> {
    Ok(match arch {
        Arch::ResNet18 => Box::new(ResNet::load(Depth::D18, vb)?),
        Arch::ResNet34 => Box::new(ResNet::load(Depth::D34, vb)?),
        Arch::ResNet50 => Box::new(ResNet::load(Depth::D50, vb)?),
        Arch::ResNet101 => Box::new(ResNet::load(Depth::D101, vb)?),
        Arch::ResNet152 => Box::new(ResNet::load(Depth::D152, vb)?),
        Arch::InceptionV3 => Box::new(InceptionV3::load(vb, options.transform_input)?),
        Arch::EfficientNetLite0 => Box::new(EfficientNetLite0::load(vb)?),
        Arch::Synthetic => Box::new(Synthetic::load(vb, options.synthetic_cost_ms)?),
    })
}

impl Model {
    /// Load `arch` from a safetensors file (memory-mapped, converted to f32).
    ///
    /// Fails with a typed error — never panics — on a missing or unreadable
    /// file, a missing tensor, a wrong shape or a non-float dtype.
    pub fn load(arch: Arch, path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let source = WeightSource::open(path.as_ref(), arch.name())?;
        Self::from_source(arch, source, options)
    }

    /// Load `arch` from safetensors bytes already in memory.
    pub fn from_safetensors_bytes(
        arch: Arch,
        bytes: Vec<u8>,
        options: &LoadOptions,
    ) -> Result<Self> {
        let source = WeightSource::from_bytes(bytes, "<memory>", arch.name())?;
        Self::from_source(arch, source, options)
    }

    fn from_source(arch: Arch, source: WeightSource, options: &LoadOptions) -> Result<Self> {
        let source = source.with_rename(options.tensor_names.mapper(arch));
        let device = Device::Cpu;
        let (vb, handle) = source.into_var_builder(&device);
        let net = build_net(arch, vb, options).map_err(|e| handle.explain(e))?;
        Ok(Model { arch, net, device })
    }

    /// The architecture of this model.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The device tensors live on (always the CPU for now).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Preprocess one image into a `(3, S, S)` tensor, `S = arch.input_size()`.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<Tensor> {
        crate::preprocess_for(self.arch).apply(image, &self.device)
    }

    /// Preprocess images into one `(N, 3, S, S)` batch.
    pub fn preprocess_batch(&self, images: &[DynamicImage]) -> Result<Tensor> {
        crate::preprocess_for(self.arch).apply_batch(images, &self.device)
    }

    /// Run the network: `(N, 3, H, W)` f32 input → `(N, 1000)` logits.
    ///
    /// One call for the whole batch: the network's early layers run image by image, side by
    /// side on the current rayon pool, its late layers on the whole batch (see
    /// `forward_batch` for why).
    ///
    /// Any `H, W` the architecture can take works (≥ 75 for Inception V3,
    /// ≥ 32 otherwise); the reference weights expect [`Arch::input_size`].
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let dims = input.dims();
        let min = match self.arch {
            Arch::InceptionV3 => inception_v3::MIN_INPUT,
            _ => 32,
        };
        match dims {
            [n, 3, h, w] if *n > 0 && *h >= min && *w >= min => {}
            _ => {
                return Err(ModelError::InvalidInput(format!(
                    "{} expects an (N, 3, H, W) tensor with N ≥ 1 and H, W ≥ {min}, got {dims:?}",
                    self.arch
                )))
            }
        }
        let input = input.to_dtype(DType::F32)?;
        let logits = forward_batch(self.net.as_ref(), &input)?;
        if logits.dims() != [dims[0], NUM_CLASSES] {
            return Err(ModelError::InvalidInput(format!(
                "network produced logits of shape {:?}",
                logits.dims()
            )));
        }
        Ok(logits)
    }

    /// Classify images: preprocessed into one `(N, 3, S, S)` batch and given
    /// to [`Model::forward`] in one call (which runs the images side by side);
    /// the `k` most probable classes per image, most probable first. An empty
    /// slice gives an empty result without running the network.
    pub fn classify(&self, images: &[DynamicImage], k: usize) -> Result<Vec<Vec<Prediction>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.preprocess_batch(images)?;
        let logits = self.forward(&batch)?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        Ok(probs.iter().map(|p| top_k(p, k)).collect())
    }
}

/// `net` on a batch: its early layers on each image on its own, the images in parallel on
/// the current rayon pool (each one's layers parallel inside too), then its late layers on
/// the whole batch, or on groups of it where the network says so.
///
/// Batching buys no arithmetic in the early layers but multiplies every activation by N:
/// at N = 8 the early layers' tensors (tens of MB) no longer fit in the caches, while one
/// image's mostly do, and images side by side keep both cores busy. A ResNet's late layers
/// are the other way round: their planes are small (14×14 and 7×7, which fill the
/// kernel's 48-pixel panels poorly one image at a time) and their weights large (a
/// ResNet-50's last stage holds 60 MB), so there one pass over the whole batch shares every
/// weight between the images. Each network says where its late part starts (Inception V3
/// and Lite0: nowhere, measured) and how many images it takes at once (a bottleneck
/// ResNet's 1×1 layers on 14×14 planes ran 5–15 % slower on 32 images than on 8: their
/// activations, 25 MB, outgrow the caches). Results are the same either way, within
/// rounding.
fn forward_batch(net: &dyn Network, input: &Tensor) -> Result<Tensor> {
    let n = input.dim(0)?;
    if n <= 1 {
        return Ok(net.late(&net.early(input)?)?);
    }
    let rows = (0..n)
        .into_par_iter()
        .map(|i| net.early(&input.narrow(0, i, 1)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    match net.late_group().filter(|&group| group > 0 && n > group) {
        Some(group) => {
            let logits = rows
                .chunks(group)
                .map(|images| net.late(&Tensor::cat(images, 0)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Tensor::cat(&logits, 0)?)
        }
        None => Ok(net.late(&Tensor::cat(&rows, 0)?)?),
    }
}

/// The `k` largest entries of `probs`, descending (ties: lower index first); a partial
/// selection, not a sort of all 1000.
pub fn top_k(probs: &[f32], k: usize) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    let k = k.min(order.len());
    if k == 0 {
        return Vec::new();
    }
    let by_prob = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
    order.select_nth_unstable_by(k - 1, by_prob);
    order.truncate(k);
    order.sort_by(by_prob);
    order
        .into_iter()
        .map(|i| Prediction {
            class_index: i,
            label: imagenet_label(i),
            probability: probs[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Model>();
    }

    #[test]
    fn top_k_orders_and_truncates() {
        let p = [0.1, 0.5, 0.05, 0.3, 0.05];
        let top = top_k(&p, 3);
        let idx: Vec<usize> = top.iter().map(|t| t.class_index).collect();
        assert_eq!(idx, vec![1, 3, 0]);
        assert_eq!(top[0].label, imagenet_label(1));
        assert_eq!(top_k(&p, 10).len(), 5);
        assert!(top_k(&p, 0).is_empty());
        // ties resolve to the lower index
        assert_eq!(top_k(&p, 5)[3].class_index, 2);
    }

    #[test]
    fn load_reports_missing_file() {
        let err = Model::load(
            Arch::ResNet18,
            "/nonexistent/weights.safetensors",
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ModelError::Io { .. }), "{err}");
    }

    #[test]
    fn load_rejects_garbage_bytes() {
        let err = Model::from_safetensors_bytes(
            Arch::ResNet18,
            b"definitely not safetensors".to_vec(),
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ModelError::InvalidWeights { .. }), "{err}");
    }
}
