//! Deterministic, seeded weights files with each architecture's exact tensor layout.
//!
//! [`generate`] writes a safetensors file holding every tensor
//! [`Arch::tensor_specs`] lists (torchvision names for ResNet/Inception,
//! EfficientNet-PyTorch names for Lite0), filled from the project's own
//! SplitMix64 generator — candle cannot seed its CPU RNG. Values are uniform
//! draws (no `ln`/`sin`, so bit-identical on every machine and libm), scaled
//! He/Kaiming-style so activations stay O(1) through 150+ layers:
//!
//! * conv weights `U(±√(6/fan_in))` (variance 2/fan_in, He),
//! * linear weights `U(±√(3/fan_in))`, biases `U(±0.1)`,
//! * BatchNorm: `running_mean U(±0.1)`, `running_var U(0.6, 1.4)`,
//!   `bias U(±0.1)`, `weight U(0.8, 1.2)` — except the last BN of a residual
//!   branch, `U(0.1, 0.3)`, so residual sums don't double per block — and
//!   for EfficientNet-Lite0 `U(1.0, 2.5)`, so plenty of activations exceed the
//!   ReLU6 cap.
//!
//! Each tensor draws from its own stream seeded by `seed` and its name, so the
//! bytes depend on nothing but `(arch, seed)`. This is test and benchmark
//! material, not a trained model: its predictions are meaningless.

use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::error::{ModelError, Result};
use super::tensors::TensorSpec;
use super::Arch;

/// SplitMix64 (Steele, Lea & Flood): tiny, fast and fully portable.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fill `out` with uniform values in `[lo, hi)`, two 24-bit draws per call.
    pub fn fill_uniform(&mut self, out: &mut [f32], lo: f32, hi: f32) {
        const UNIT: f32 = 1.0 / (1u32 << 24) as f32;
        let span = (hi - lo) * UNIT;
        let mut pairs = out.chunks_exact_mut(2);
        for pair in &mut pairs {
            let bits = self.next_u64();
            pair[0] = lo + span * ((bits >> 40) as u32) as f32;
            pair[1] = lo + span * (((bits >> 8) & 0xFF_FFFF) as u32) as f32;
        }
        for last in pairs.into_remainder() {
            *last = lo + span * ((self.next_u64() >> 40) as u32) as f32;
        }
    }
}

/// 64-bit FNV-1a, used to derive per-tensor seeds and fingerprints.
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
            Arch::ResNet18 | Arch::ResNet34 => name.contains("layer") && name.ends_with(".bn2.weight"),
            Arch::ResNet50 | Arch::ResNet101 | Arch::ResNet152 => name.ends_with(".bn3.weight"),
            _ => false,
        };
        return match (residual_last, arch) {
            (true, _) => (0.1, 0.3),
            (false, Arch::EfficientNetLite0) => (1.0, 2.5),
            (false, _) => (0.8, 1.2),
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

/// Whether `spec` belongs to a BatchNorm layer (it has a `running_mean` sibling).
fn is_batch_norm(spec: &TensorSpec, all: &[TensorSpec]) -> bool {
    let Some((prefix, _)) = spec.name.rsplit_once('.') else {
        return false;
    };
    let probe = format!("{prefix}.running_mean");
    all.iter().any(|s| s.name == probe)
}

/// Values of one tensor for `(arch, seed)`.
fn tensor_values(arch: Arch, seed: u64, spec: &TensorSpec, is_bn: bool) -> Vec<f32> {
    let (lo, hi) = init_range(arch, spec, is_bn);
    let mut values = vec![0f32; spec.shape.iter().product()];
    SplitMix64::new(seed ^ fnv1a64(spec.name.as_bytes())).fill_uniform(&mut values, lo, hi);
    values
}

/// Write the safetensors encoding of `arch`'s weights for `seed` into `out`.
fn write_to(arch: Arch, seed: u64, out: &mut impl Write) -> std::io::Result<()> {
    let mut specs = arch
        .tensor_specs()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
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
    for spec in &specs {
        let values = tensor_values(arch, seed, spec, is_batch_norm(spec, &specs));
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes)?;
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

/// A seeded `(n, 3, size, size)` input batch, uniform in `[-2, 2)` (roughly
/// the range of ImageNet-normalised images).
pub fn random_input(seed: u64, n: usize, size: usize) -> Result<Tensor> {
    let mut values = vec![0f32; n * 3 * size * size];
    SplitMix64::new(seed).fill_uniform(&mut values, -2.0, 2.0);
    Ok(Tensor::from_vec(values, (n, 3, size, size), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of SplitMix64 seeded with 1234567.
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn uniform_stays_in_range() {
        let mut v = vec![0f32; 10_001];
        SplitMix64::new(7).fill_uniform(&mut v, -0.5, 0.25);
        assert!(v.iter().all(|&x| (-0.5..0.25).contains(&x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean + 0.125).abs() < 0.01, "mean {mean}");
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
