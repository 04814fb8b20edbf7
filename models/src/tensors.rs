//! Where a network's tensors come from: checked safetensors sources and a recorder.
//!
//! * [`WeightSource`] wraps a memory-mapped or in-memory safetensors file as a
//!   candle `VarBuilder` backend that, before handing a tensor over, checks it
//!   exists, has the shape the network asks for and a float dtype, and keeps
//!   the first such problem as a typed [`ModelError`] (candle's own errors are
//!   strings) — so a bad file is an error, never a panic.
//! * [`record_specs`] builds a network against a recording backend to list
//!   every tensor name and shape the network needs, without any weights; the
//!   generator and the load-time checks both derive from that single list.
//!
//! This is not a weights format converter and does not rename tensors beyond
//! an optional name-mapping function.

use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::safetensors::{BufferedSafetensors, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::error::{ModelError, Result};

/// One tensor a network needs: its name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name as stored in the weights file (e.g. `layer1.0.conv1.weight`).
    pub name: String,
    /// Shape in PyTorch order (conv weights are `out, in, kh, kw`).
    pub shape: Vec<usize>,
}

enum Store {
    Mmap(MmapedSafetensors),
    Buffer(BufferedSafetensors),
}

/// A safetensors file as a checked `VarBuilder` backend.
pub struct WeightSource {
    store: Store,
    source_name: String,
    arch: &'static str,
    rename: fn(&str) -> String,
    problem: Mutex<Option<ModelError>>,
}

fn identity(name: &str) -> String {
    name.to_string()
}

impl WeightSource {
    /// Memory-map a safetensors file.
    pub fn open(path: &Path, arch: &'static str) -> Result<Self> {
        let source_name = path.display().to_string();
        if let Err(source) = std::fs::metadata(path) {
            return Err(ModelError::Io {
                action: "cannot open weights",
                path: path.to_path_buf(),
                source,
            });
        }
        // SAFETY: the file is mapped read-only; like every mmap-based loader we
        // rely on nobody truncating or rewriting it while the model is built
        // (tensors are copied out of the map during loading).
        let mmap =
            unsafe { MmapedSafetensors::new(path) }.map_err(|e| ModelError::InvalidWeights {
                source_name: source_name.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self::with_store(Store::Mmap(mmap), source_name, arch))
    }

    /// Use an in-memory safetensors file (e.g. fetched from SDFS).
    pub fn from_bytes(bytes: Vec<u8>, source_name: &str, arch: &'static str) -> Result<Self> {
        let buf = BufferedSafetensors::new(bytes).map_err(|e| ModelError::InvalidWeights {
            source_name: source_name.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self::with_store(
            Store::Buffer(buf),
            source_name.to_string(),
            arch,
        ))
    }

    fn with_store(store: Store, source_name: String, arch: &'static str) -> Self {
        WeightSource {
            store,
            source_name,
            arch,
            rename: identity,
            problem: Mutex::new(None),
        }
    }

    /// Map the network's tensor names to the file's names (e.g. timm naming).
    pub fn with_rename(mut self, rename: fn(&str) -> String) -> Self {
        self.rename = rename;
        self
    }

    fn note(&self, err: ModelError) -> candle_core::Error {
        let msg = err.to_string();
        if let Ok(mut slot) = self.problem.lock() {
            if slot.is_none() {
                *slot = Some(err);
            }
        }
        candle_core::Error::Msg(msg)
    }

    /// Turn a candle error raised while building the network into the typed
    /// problem this source recorded, if any.
    pub fn explain(&self, err: candle_core::Error) -> ModelError {
        match self.problem.lock().ok().and_then(|mut slot| slot.take()) {
            Some(problem) => problem,
            None => ModelError::Candle(err),
        }
    }

    /// Check `name` against `shape` and return it as an f32 tensor.
    fn fetch(&self, shape: &Shape, name: &str, dev: &Device) -> Result<Tensor> {
        let file_name = (self.rename)(name);
        let view = match &self.store {
            Store::Mmap(m) => m.get(&file_name),
            Store::Buffer(b) => b.get(&file_name),
        };
        let view = view.map_err(|_| ModelError::MissingTensor {
            source_name: self.source_name.clone(),
            arch: self.arch,
            tensor: file_name.clone(),
        })?;
        if view.shape() != shape.dims() {
            return Err(ModelError::ShapeMismatch {
                source_name: self.source_name.clone(),
                arch: self.arch,
                tensor: file_name,
                expected: shape.dims().to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let dtype = DType::try_from(view.dtype()).ok();
        if !matches!(
            dtype,
            Some(DType::F32 | DType::F16 | DType::BF16 | DType::F64)
        ) {
            return Err(ModelError::UnsupportedDtype {
                source_name: self.source_name.clone(),
                tensor: file_name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let tensor = match &self.store {
            Store::Mmap(m) => m.load(&file_name, dev),
            Store::Buffer(b) => b.load(&file_name, dev),
        }
        .map_err(|e| ModelError::InvalidWeights {
            source_name: self.source_name.clone(),
            reason: format!("tensor {file_name:?}: {e}"),
        })?;
        Ok(tensor.to_dtype(DType::F32)?)
    }

    /// A `VarBuilder` reading f32 tensors from this source.
    pub fn into_var_builder(self, device: &Device) -> (VarBuilder<'static>, SourceHandle) {
        let shared = Arc::new(self);
        let vb = VarBuilder::from_backend(
            Box::new(SharedSource(shared.clone())),
            DType::F32,
            device.clone(),
        );
        (vb, SourceHandle(shared))
    }
}

/// Keeps access to a [`WeightSource`] after it went into a `VarBuilder`, to
/// translate build errors with [`SourceHandle::explain`].
pub struct SourceHandle(Arc<WeightSource>);

impl SourceHandle {
    /// See [`WeightSource::explain`].
    pub fn explain(&self, err: candle_core::Error) -> ModelError {
        self.0.explain(err)
    }
}

struct SharedSource(Arc<WeightSource>);

impl SimpleBackend for SharedSource {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.0.fetch(&s, name, dev) {
            Ok(t) => t.to_dtype(dtype),
            Err(e) => Err(self.0.note(e)),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let file_name = (self.0.rename)(name);
        let loaded = match &self.0.store {
            Store::Mmap(m) => m.load(&file_name, dev),
            Store::Buffer(b) => b.load(&file_name, dev),
        };
        loaded.and_then(|t| t.to_dtype(dtype))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let file_name = (self.0.rename)(name);
        match &self.0.store {
            Store::Mmap(m) => m.get(&file_name).is_ok(),
            Store::Buffer(b) => b.get(&file_name).is_ok(),
        }
    }
}

/// Backend that hands out zero tensors (cheap broadcasts) and remembers what
/// was asked for.
struct Recorder {
    seen: Arc<Mutex<Vec<TensorSpec>>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| candle_core::Error::Msg("recorder lock poisoned".into()))?;
        if !seen.iter().any(|t| t.name == name) {
            seen.push(TensorSpec {
                name: name.to_string(),
                shape: s.dims().to_vec(),
            });
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "recorder cannot serve shape-less tensor {name}"
        )))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// List the tensors `build` asks its `VarBuilder` for, in request order.
pub fn record_specs<T>(
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<Vec<TensorSpec>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder { seen: seen.clone() };
    let vb = VarBuilder::from_backend(Box::new(recorder), DType::F32, Device::Cpu);
    build(vb)?;
    let specs = seen
        .lock()
        .map_err(|_| ModelError::InvalidInput("recorder lock poisoned".into()))?
        .clone();
    Ok(specs)
}
