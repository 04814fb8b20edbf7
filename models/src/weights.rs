//! Deterministic, seeded weights files with each architecture's exact tensor layout.
//!
//! [`generate`] writes a safetensors file holding every tensor
//! [`crate::tensor_specs`] lists (torchvision names for ResNet/Inception,
//! EfficientNet-PyTorch names for Lite0), filled from a seeded ChaCha8 stream
//! (`rand_chacha`, whose output is fixed across platforms and versions) —
//! candle cannot seed its CPU RNG. Values are uniform draws (no `ln`/`sin`,
//! so bit-identical on every machine and libm), scaled
//! He/Kaiming-style so activations stay O(1) through 150+ layers:
//!
//! * conv weights `U(±√(6/fan_in))` (variance 2/fan_in, He),
//! * linear weights `U(±√(3/fan_in))`, biases `U(±0.1)`,
//! * BatchNorm: `running_mean U(±0.1)`, `running_var U(0.6, 1.4)`,
//!   `bias U(±0.1)`, `weight U(0.8, 1.2)` — except the last BN of a residual
//!   branch, `U(0.1, 0.3)`, so residual sums don't double per block.
//!
//! Gains stay near 1 on purpose: with BN weights around 2, EfficientNet-Lite0
//! becomes chaotic (PyTorch's own f32 and f64 logits then differ by 3 %), and
//! no 1e-4 comparison is meaningful. With these ranges f32 vs f64 agree to
//! ~2e-6, while 1–10 % of Lite0's activations still exceed the ReLU6 cap.
//!
//! Each tensor draws from its own stream seeded by `seed` and its name, so the
//! bytes depend on nothing but `(arch, seed)`. This is test and benchmark
//! material, not a trained model: its predictions are meaningless.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::{ModelError, Result};
use super::tensors::TensorSpec;
use super::Arch;

/// `n` uniform values in `[lo, hi]` from a ChaCha8 stream seeded with `seed`.
///
/// The bulk work (ChaCha, u32 → f32, scaling) runs in optimised dependencies:
/// this crate is built at opt-level 0 in dev/test profiles.
fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> candle_core::Result<Vec<f32>> {
    let mut raw = vec![0u32; n];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(bytemuck::cast_slice_mut(&mut raw));
    if cfg!(target_endian = "big") {
        // ChaCha's output is a little-endian byte stream; keep values portable.
        raw.iter_mut().for_each(|w| *w = u32::from_le(*w));
    }
    let scale = (hi - lo) as f64 / 4_294_967_296.0;
    Tensor::from_vec(raw, n, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .affine(scale, lo as f64)?
        .to_vec1::<f32>()
}

/// Little-endian bytes of `values` (a free cast on little-endian hosts).
fn le_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// 64-bit FNV-1a, used to derive per-tensor seeds and for fingerprints.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Fingerprint of a tensor layout: FNV-1a over the name-sorted lines
/// `name:d0,d1,…\n`. The fixture script computes the same from PyTorch.
pub fn layout_fingerprint(specs: &[TensorSpec]) -> u64 {
    let mut lines: Vec<String> = specs
        .iter()
        .map(|s| {
            let dims: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
            format!("{}:{}\n", s.name, dims.join(","))
        })
        .collect();
    lines.sort();
    fnv1a64(lines.concat().as_bytes())
}

/// The uniform range a tensor is drawn from (see the module docs).
fn init_range(arch: Arch, spec: &TensorSpec, is_bn: bool) -> (f32, f32) {
    let name = spec.name.as_str();
    let fan_in = |shape: &[usize]| shape[1..].iter().product::<usize>().max(1) as f32;
    if is_bn {
        if name.ends_with(".running_mean") || name.ends_with(".bias") {
            return (-0.1, 0.1);
        }
        if name.ends_with(".running_var") {
            return (0.6, 1.4);
        }
        let residual_last = match arch {
            Arch::ResNet18 | Arch::ResNet34 => {
                name.contains("layer") && name.ends_with(".bn2.weight")
            }
            Arch::ResNet50 | Arch::ResNet101 | Arch::ResNet152 => name.ends_with(".bn3.weight"),
            _ => false,
        };
        return if residual_last {
            (0.1, 0.3)
        } else {
            (0.8, 1.2)
        };
    }
    match spec.shape.len() {
        4 => {
            let b = (6.0 / fan_in(&spec.shape)).sqrt();
            (-b, b)
        }
        2 => {
            let b = (3.0 / fan_in(&spec.shape)).sqrt();
            (-b, b)
        }
        _ => (-0.1, 0.1),
    }
}

/// Prefixes of the BatchNorm layers among `specs` (those with a `running_mean`).
fn batch_norm_prefixes(specs: &[TensorSpec]) -> HashSet<&str> {
    specs
        .iter()
        .filter_map(|s| s.name.strip_suffix(".running_mean"))
        .collect()
}

/// Values of one tensor for `(arch, seed)`: its own stream, seeded by the name.
fn tensor_values(
    arch: Arch,
    seed: u64,
    spec: &TensorSpec,
    is_bn: bool,
) -> std::io::Result<Vec<f32>> {
    let (lo, hi) = init_range(arch, spec, is_bn);
    let n = spec.shape.iter().product();
    uniform(seed ^ fnv1a64(spec.name.as_bytes()), n, lo, hi)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Write the safetensors encoding of `arch`'s weights for `seed` into `out`.
fn write_to(arch: Arch, seed: u64, out: &mut impl Write) -> std::io::Result<()> {
    let mut specs = crate::tensor_specs(arch).map_err(|e| std::io::Error::other(e.to_string()))?;
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for spec in &specs {
        let bytes = 4 * spec.shape.iter().product::<usize>();
        header.insert(
            spec.name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": spec.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ "generator": "idunno weights::generate", "arch": arch.name(), "seed": seed.to_string() }),
    );
    let mut json = serde_json::to_vec(&header)?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    let bn = batch_norm_prefixes(&specs);
    for spec in &specs {
        let is_bn = spec
            .name
            .rsplit_once('.')
            .is_some_and(|(prefix, _)| bn.contains(prefix));
        out.write_all(&le_bytes(&tensor_values(arch, seed, spec, is_bn)?))?;
    }
    out.flush()
}

/// Write `arch`'s seeded weights to `path` as safetensors (deterministic bytes).
pub fn generate(arch: Arch, seed: u64, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let io_err = |source| ModelError::Io {
        action: "cannot write weights",
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io_err)?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    write_to(arch, seed, &mut writer).map_err(io_err)
}

/// `arch`'s seeded weights as safetensors bytes in memory.
pub fn generate_to_bytes(arch: Arch, seed: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    write_to(arch, seed, &mut buf).map_err(|source| ModelError::Io {
        action: "cannot serialise weights",
        path: "<memory>".into(),
        source,
    })?;
    Ok(buf)
}

/// A seeded `(n, 3, size, size)` input batch in roughly the range of
/// ImageNet-normalised images: a coarse 8×8 random pattern per image and
/// channel (nearest-upsampled, `U(-1.5, 1.5)`) plus fine noise `U(-0.5, 0.5)`.
/// The coarse part makes the images of a batch differ after global pooling,
/// which pure i.i.d. noise would not.
pub fn random_input(seed: u64, n: usize, size: usize) -> Result<Tensor> {
    let dev = Device::Cpu;
    let coarse = uniform(seed, n * 3 * 64, -1.5, 1.5)?;
    let coarse = Tensor::from_vec(coarse, (n, 3, 8, 8), &dev)?.upsample_nearest2d(size, size)?;
    let fine = uniform(seed ^ 0x5EED, n * 3 * size * size, -0.5, 0.5)?;
    let fine = Tensor::from_vec(fine, (n, 3, size, size), &dev)?;
    Ok((coarse + fine)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_seeded_and_in_range() {
        let a = uniform(7, 10_001, -0.5, 0.25).unwrap();
        assert!(a.iter().all(|&x| (-0.5..=0.25).contains(&x)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((mean + 0.125).abs() < 0.01, "mean {mean}");
        assert_eq!(a, uniform(7, 10_001, -0.5, 0.25).unwrap());
        assert_ne!(a, uniform(8, 10_001, -0.5, 0.25).unwrap());
    }

    #[test]
    fn fnv_reference_value() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn init_ranges_follow_roles() {
        let conv = TensorSpec {
            name: "conv1.weight".into(),
            shape: vec![64, 3, 7, 7],
        };
        let (lo, hi) = init_range(Arch::ResNet18, &conv, false);
        assert!((hi - (6.0f32 / 147.0).sqrt()).abs() < 1e-7 && lo == -hi);
        let last = TensorSpec {
            name: "layer1.0.bn3.weight".into(),
            shape: vec![256],
        };
        assert_eq!(init_range(Arch::ResNet50, &last, true), (0.1, 0.3));
        assert_eq!(init_range(Arch::ResNet18, &last, true), (0.8, 1.2));
    }
}
