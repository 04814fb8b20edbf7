//! `idunno-models`: the image-classification networks the IDunno worker runs, on candle
//! (CPU, f32).
//!
//! The public surface:
//! * [`Arch`] — the supported architectures (defined with the API's types, since the
//!   cluster names them too); [`preprocess_for`] and [`tensor_specs`] say what each one
//!   needs.
//! * [`Model`] — a loaded network: [`Model::load`] (a local safetensors file)
//!   or [`Model::from_safetensors_bytes`], then [`Model::preprocess`],
//!   [`Model::forward`] (a batch in one call, its images run side by side)
//!   and [`Model::classify`] (preprocess, forward, softmax, top-k
//!   [`Prediction`]s).
//! * [`imagenet_label`] — the ImageNet-1k class names.
//! * [`weights`] — a deterministic, seeded generator of weights files with the
//!   exact tensor names and shapes (tests, benchmarks, demos without downloads).
//! * [`hub`] — where the real weights live on the Hugging Face hub (URLs and
//!   tensor-name mapping only; no HTTP client here).
//!
//! One file per architecture (`resnet.rs`, `inception_v3.rs`,
//! `efficientnet_lite0.rs`, and `synthetic.rs`, the calibration model of
//! declared cost). This crate knows nothing of the cluster: no scheduling,
//! caching or networking; the worker depends on it, as candle-transformers'
//! examples depend on candle-transformers.

mod efficientnet_lite0;
mod error;
pub mod hub;
mod inception_v3;
mod kernels;
mod labels;
mod layers;
mod model;
pub mod preprocess;
mod resnet;
mod synthetic;
mod tensors;
pub mod weights;

pub use candle_core::{Device, Tensor};
pub use error::{ModelError, Result};
pub use hub::TensorNames;
pub use idunno_api::arch::Arch;
pub use labels::{imagenet_label, imagenet_labels, NUM_CLASSES};
pub use model::{top_k, LoadOptions, Model, Prediction};
pub use preprocess::Preprocess;
pub use tensors::TensorSpec;

/// The eval preprocessing matching `arch`'s reference weights.
pub const fn preprocess_for(arch: Arch) -> Preprocess {
    match arch {
        Arch::InceptionV3 => inception_v3::PREPROCESS,
        Arch::EfficientNetLite0 => efficientnet_lite0::PREPROCESS,
        Arch::Synthetic => synthetic::PREPROCESS,
        _ => resnet::PREPROCESS,
    }
}

/// Every tensor (name, shape) `arch`'s network reads from a weights file, in the order it
/// reads them. Extra tensors in a file are ignored.
pub fn tensor_specs(arch: Arch) -> Result<Vec<TensorSpec>> {
    tensors::record_specs(|vb| model::build_net(arch, vb, &LoadOptions::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocessing_crops_to_the_input_size() {
        for arch in Arch::ALL.into_iter().chain([Arch::Synthetic]) {
            assert_eq!(preprocess_for(arch).crop as usize, arch.input_size());
        }
    }
}
