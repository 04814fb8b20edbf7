//! Where real weights live on the Hugging Face hub, and how their tensors are named.
//!
//! URLs, name mapping and [`to_native`]: this file has no HTTP client (`idunno model add
//! --weights hub` downloads; workers read weights from SDFS only).
//! Download URLs have the form `https://huggingface.co/{repo}/resolve/{revision}/{file}`.
//!
//! Naming: timm's `*.tv_in1k` ResNets and `inception_v3.tv_in1k` are the
//! torchvision weights under torchvision's names, so they load as-is (with the
//! default [`TensorNames::Native`]). timm's `tf_efficientnet_lite0.in1k` is the
//! TensorFlow Lite0 port (TF "SAME" padding, `(x − 127.5) / 127.5`-style
//! inputs, close to our `(x − 127) / 128`) under timm's names; load it with
//! [`TensorNames::Timm`], which maps our EfficientNet-PyTorch names onto
//! timm's (`_conv_stem` → `conv_stem`, `_blocks.5._expand_conv` →
//! `blocks.3.0.conv_pw`, …). These mappings cannot be exercised offline; the
//! unit tests only pin them down.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;

use super::error::{ModelError, Result};
use super::Arch;

/// Rewrites the weights file `src` (tensors named per `names`) as `dst` holding exactly the
/// tensors `arch` reads, under the native names every worker loads.
pub fn to_native(arch: Arch, names: TensorNames, src: &Path, dst: &Path) -> Result<()> {
    let source_name = src.display().to_string();
    let invalid = |reason: String| ModelError::InvalidWeights {
        source_name: source_name.clone(),
        reason,
    };
    let tensors =
        candle_core::safetensors::load(src, &Device::Cpu).map_err(|e| invalid(e.to_string()))?;
    let theirs = names.mapper(arch);
    let mut out = HashMap::new();
    for spec in crate::tensor_specs(arch)? {
        let name = theirs(&spec.name);
        let tensor = tensors
            .get(&name)
            .ok_or_else(|| ModelError::MissingTensor {
                source_name: source_name.clone(),
                arch: arch.name(),
                tensor: name.clone(),
            })?;
        out.insert(spec.name, tensor.clone());
    }
    candle_core::safetensors::save(&out, dst).map_err(|e| invalid(e.to_string()))
}

/// Base of Hugging Face download URLs.
pub const HF_BASE: &str = "https://huggingface.co";

/// The download URL of `file` in hub repository `repo` at `revision` (e.g. `main`).
pub fn download_url(repo: &str, file: &str, revision: &str) -> String {
    format!("{HF_BASE}/{repo}/resolve/{revision}/{file}")
}

/// A weights file on the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubWeights {
    /// Repository, e.g. `timm/resnet50.tv_in1k`.
    pub repo: &'static str,
    /// File inside the repository.
    pub file: &'static str,
    /// How its tensors are named.
    pub tensor_names: TensorNames,
}

impl HubWeights {
    /// Download URL at revision `main`.
    pub fn url(&self) -> String {
        download_url(self.repo, self.file, "main")
    }
}

/// Recommended hub weights for `arch` (torchvision-trained where available,
/// so the preprocessing of [`Arch::preprocess`] applies); `None` for
/// [`Arch::Synthetic`], which has no trained weights.
pub fn default_weights(arch: Arch) -> Option<HubWeights> {
    let (repo, tensor_names) = match arch {
        Arch::ResNet18 => ("timm/resnet18.tv_in1k", TensorNames::Native),
        Arch::ResNet34 => ("timm/resnet34.tv_in1k", TensorNames::Native),
        Arch::ResNet50 => ("timm/resnet50.tv_in1k", TensorNames::Native),
        Arch::ResNet101 => ("timm/resnet101.tv_in1k", TensorNames::Native),
        Arch::ResNet152 => ("timm/resnet152.tv_in1k", TensorNames::Native),
        Arch::InceptionV3 => ("timm/inception_v3.tv_in1k", TensorNames::Native),
        Arch::EfficientNetLite0 => ("timm/tf_efficientnet_lite0.in1k", TensorNames::Timm),
        Arch::Synthetic => return None,
    };
    Some(HubWeights {
        repo,
        file: "model.safetensors",
        tensor_names,
    })
}

/// Naming scheme of the tensors in a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TensorNames {
    /// torchvision names (ResNet, Inception V3), EfficientNet-PyTorch names (Lite0).
    #[default]
    Native,
    /// timm names (differ from native only for EfficientNet-Lite0).
    Timm,
}

impl TensorNames {
    /// A function from the network's tensor names to the file's names.
    pub fn mapper(self, arch: Arch) -> fn(&str) -> String {
        match (self, arch) {
            (TensorNames::Timm, Arch::EfficientNetLite0) => timm_lite0_name,
            _ => str::to_string,
        }
    }
}

/// Blocks per stage of EfficientNet-Lite0 (timm numbers blocks `stage.index`).
const LITE0_STAGE_BLOCKS: [usize; 7] = [1, 2, 2, 3, 3, 4, 1];

/// Map an EfficientNet-PyTorch Lite0 tensor name to timm's name.
pub fn timm_lite0_name(name: &str) -> String {
    let top = [
        ("_conv_stem.", "conv_stem."),
        ("_bn0.", "bn1."),
        ("_conv_head.", "conv_head."),
        ("_bn1.", "bn2."),
        ("_fc.", "classifier."),
    ];
    for (ours, theirs) in top {
        if let Some(rest) = name.strip_prefix(ours) {
            return format!("{theirs}{rest}");
        }
    }
    let Some(rest) = name.strip_prefix("_blocks.") else {
        return name.to_string();
    };
    let Some((index, rest)) = rest.split_once('.') else {
        return name.to_string();
    };
    let Ok(mut index) = index.parse::<usize>() else {
        return name.to_string();
    };
    let mut stage = 0;
    while stage < LITE0_STAGE_BLOCKS.len() && index >= LITE0_STAGE_BLOCKS[stage] {
        index -= LITE0_STAGE_BLOCKS[stage];
        stage += 1;
    }
    // Stage 0 is timm's DepthwiseSeparableConv (dw → pw); the rest are
    // InvertedResidual (pw → dw → pwl).
    let (module, rest) = rest.split_once('.').unwrap_or((rest, ""));
    let mapped = match (stage == 0, module) {
        (true, "_depthwise_conv") => "conv_dw",
        (true, "_bn1") => "bn1",
        (true, "_project_conv") => "conv_pw",
        (true, "_bn2") => "bn2",
        (false, "_expand_conv") => "conv_pw",
        (false, "_bn0") => "bn1",
        (false, "_depthwise_conv") => "conv_dw",
        (false, "_bn1") => "bn2",
        (false, "_project_conv") => "conv_pwl",
        (false, "_bn2") => "bn3",
        _ => module,
    };
    format!("blocks.{stage}.{index}.{mapped}.{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            default_weights(Arch::ResNet50).unwrap().url(),
            "https://huggingface.co/timm/resnet50.tv_in1k/resolve/main/model.safetensors"
        );
        assert_eq!(
            download_url("timm/inception_v3.tv_in1k", "model.safetensors", "abc"),
            "https://huggingface.co/timm/inception_v3.tv_in1k/resolve/abc/model.safetensors"
        );
    }

    #[test]
    fn a_timm_named_file_becomes_a_loadable_native_one() {
        let dir = tempfile::tempdir().unwrap();
        let arch = Arch::EfficientNetLite0;
        let native = dir.path().join("native.safetensors");
        crate::weights::generate(arch, 3, &native).unwrap();
        // The same tensors under timm's names, plus one the network does not read.
        let mut timm = candle_core::safetensors::load(&native, &Device::Cpu).unwrap();
        let theirs = TensorNames::Timm.mapper(arch);
        timm = timm.into_iter().map(|(k, v)| (theirs(&k), v)).collect();
        let extra = candle_core::Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        timm.insert("head.extra".into(), extra);
        let hub_file = dir.path().join("timm.safetensors");
        candle_core::safetensors::save(&timm, &hub_file).unwrap();

        let back = dir.path().join("back.safetensors");
        to_native(arch, TensorNames::Timm, &hub_file, &back).unwrap();
        let want = candle_core::safetensors::load(&native, &Device::Cpu).unwrap();
        let got = candle_core::safetensors::load(&back, &Device::Cpu).unwrap();
        assert_eq!(got.len(), want.len());
        for (name, tensor) in &want {
            let diff = (got[name].clone() - tensor).unwrap().abs().unwrap();
            let max = diff.flatten_all().unwrap().max(0).unwrap();
            assert_eq!(max.to_scalar::<f32>().unwrap(), 0.0, "{name}");
        }
        // A file that lacks a tensor is refused with its name.
        timm.remove("conv_stem.weight");
        candle_core::safetensors::save(&timm, &hub_file).unwrap();
        let err = to_native(arch, TensorNames::Timm, &hub_file, &back).unwrap_err();
        assert!(err.to_string().contains("conv_stem.weight"), "{err}");
    }

    #[test]
    fn timm_lite0_names() {
        let m = TensorNames::Timm.mapper(Arch::EfficientNetLite0);
        assert_eq!(m("_conv_stem.weight"), "conv_stem.weight");
        assert_eq!(m("_bn0.running_var"), "bn1.running_var");
        assert_eq!(
            m("_blocks.0._depthwise_conv.weight"),
            "blocks.0.0.conv_dw.weight"
        );
        assert_eq!(m("_blocks.0._bn2.bias"), "blocks.0.0.bn2.bias");
        assert_eq!(
            m("_blocks.1._expand_conv.weight"),
            "blocks.1.0.conv_pw.weight"
        );
        assert_eq!(m("_blocks.2._bn1.weight"), "blocks.1.1.bn2.weight");
        assert_eq!(
            m("_blocks.5._project_conv.weight"),
            "blocks.3.0.conv_pwl.weight"
        );
        assert_eq!(
            m("_blocks.15._bn2.running_mean"),
            "blocks.6.0.bn3.running_mean"
        );
        assert_eq!(m("_conv_head.weight"), "conv_head.weight");
        assert_eq!(m("_bn1.weight"), "bn2.weight");
        assert_eq!(m("_fc.bias"), "classifier.bias");
        let native = TensorNames::Timm.mapper(Arch::ResNet50);
        assert_eq!(native("layer1.0.bn1.weight"), "layer1.0.bn1.weight");
    }
}
