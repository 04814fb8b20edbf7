//! The worker's loaded models, and the weights files they come from.
//!
//! A model is known by its registry name, architecture and weights SDFS name
//! ([`ModelSpec`]). The first request for one reads the weights through the coordinators into
//! `--cache/<blake3>.safetensors` (kept only if the hash matches; a file already there with
//! the right hash is reused), memory-maps it with [`Model::load`], runs one warm-up forward
//! pass (the first pass is 2–3× slower), and keeps the model in memory for good. Concurrent
//! requests for the same model wait for the one load. Loading runs on the compute pool, off
//! the async threads, so heartbeats keep flowing. Nothing here is needed after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use idunno_api::worker::Lease;
use idunno_api::Client;
use tokio::sync::OnceCell;

use crate::error::WorkerError;
use crate::pool::ComputePool;
use crate::sdfs;
use idunno_models::{Arch, LoadOptions, Model, Tensor};

/// Which model, from which weights.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelSpec {
    /// Registry name (what jobs and heartbeats name).
    pub name: String,
    pub arch: Arch,
    /// SDFS name of the safetensors weights.
    pub weights: String,
    /// The declared CPU ms per image of a synthetic model (0 otherwise).
    pub cost_ms: u32,
}

impl ModelSpec {
    /// The model a lease's batch needs.
    pub fn from_lease(lease: &Lease) -> Result<ModelSpec, WorkerError> {
        Self::new(&lease.model, lease.arch, &lease.weights, lease.cost_ms)
    }

    /// The model an online batch needs.
    pub fn from_online(lease: &idunno_api::online::OnlineLease) -> Result<ModelSpec, WorkerError> {
        Self::new(&lease.model, lease.arch, &lease.weights, lease.cost_ms)
    }

    /// The model a registry entry describes.
    pub fn from_registry(model: &idunno_api::model::Model) -> Result<ModelSpec, WorkerError> {
        Self::new(
            &model.name,
            model.arch,
            &model.weights,
            model.cost_ms.unwrap_or(0),
        )
    }

    fn new(name: &str, arch: Arch, weights: &str, cost_ms: u32) -> Result<ModelSpec, WorkerError> {
        if weights.is_empty() {
            return Err(WorkerError::UnknownModel {
                model: name.to_string(),
                reason: "the registry names no weights file".into(),
            });
        }
        Ok(ModelSpec {
            name: name.to_string(),
            arch,
            weights: weights.to_string(),
            cost_ms,
        })
    }
}

/// Loaded models by spec; cheap to share behind an `Arc`.
pub struct ModelCache {
    client: Client,
    /// Folder of `<blake3>.safetensors` files.
    dir: PathBuf,
    pool: ComputePool,
    /// One cell per spec ever asked for; a cell is set once its load succeeded. A failed or
    /// abandoned load leaves it empty for the next request to try again.
    slots: Mutex<HashMap<ModelSpec, Arc<OnceCell<Arc<Model>>>>>,
    /// Weights files actually downloaded (not found in the folder).
    downloads: AtomicU64,
}

impl ModelCache {
    pub fn new(client: Client, dir: PathBuf, pool: ComputePool) -> ModelCache {
        ModelCache {
            client,
            dir,
            pool,
            slots: Mutex::new(HashMap::new()),
            downloads: AtomicU64::new(0),
        }
    }

    /// The model, loading it first if needed (once, however many callers ask at once).
    pub async fn get(&self, spec: &ModelSpec) -> Result<Arc<Model>, WorkerError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(spec.clone()).or_default().clone()
        };
        let model = slot.get_or_try_init(|| self.load(spec)).await?;
        Ok(model.clone())
    }

    /// Registry names of the models loaded now, sorted (what heartbeats report).
    pub fn loaded(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = slots
            .iter()
            .filter(|(_, cell)| cell.initialized())
            .map(|(spec, _)| spec.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether a model of this registry name is loaded.
    pub fn is_loaded(&self, name: &str) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .any(|(spec, cell)| spec.name == name && cell.initialized())
    }

    /// How many weights files were downloaded (rather than found in the cache folder).
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    async fn load(&self, spec: &ModelSpec) -> Result<Arc<Model>, WorkerError> {
        let started = Instant::now();
        let file =
            sdfs::read_into_cache(&self.client, &spec.weights, &self.dir, ".safetensors").await?;
        if !file.reused {
            self.downloads.fetch_add(1, Ordering::Relaxed);
        }
        let (arch, path) = (spec.arch, file.path.clone());
        let options = LoadOptions {
            synthetic_cost_ms: spec.cost_ms,
            ..LoadOptions::default()
        };
        let model = self
            .pool
            .run(move || -> Result<Model, WorkerError> {
                let model = Model::load(arch, &path, &options)?;
                warm_up(&model)?;
                Ok(model)
            })
            .await??;
        tracing::info!(
            model = %spec.name,
            arch = %spec.arch,
            weights = %spec.weights,
            hash = %file.hash,
            reused = file.reused,
            ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(Arc::new(model))
    }
}

/// One forward pass on a zero image, so the first real batch is not the slow one.
pub fn warm_up(model: &Model) -> Result<(), WorkerError> {
    let side = model.arch().input_size();
    let input = Tensor::zeros((1, 3, side, side), candle_core::DType::F32, model.device())
        .map_err(idunno_models::ModelError::from)?;
    model.forward(&input)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Loading through real coordinators and storage nodes needs the embedded cluster of the
    //! root package: those tests are in `tests/worker_reads.rs`.

    use super::*;

    #[test]
    fn specs_come_from_registry_entries_and_refuse_missing_weights() {
        let registry = idunno_api::model::Model {
            name: "r".into(),
            arch: Arch::ResNet50,
            weights: "w".into(),
            input_size: 224,
            created_at_ms: 0,
            loaded_on: vec![],
            cost_ms: None,
            cost_ms_per_query: 0.0,
            online: Default::default(),
        };
        assert_eq!(
            ModelSpec::from_registry(&registry).unwrap().arch,
            Arch::ResNet50
        );
        let nameless = idunno_api::model::Model {
            weights: String::new(),
            ..registry
        };
        let err = ModelSpec::from_registry(&nameless).unwrap_err();
        assert!(!err.is_transient(), "{err}");
        // An architecture no worker knows never gets this far: it is no `Arch`.
        let entry =
            r#"{"name":"v","arch":"vgg16","weights":"w","input_size":224,"created_at_ms":0}"#;
        assert!(serde_json::from_str::<idunno_api::model::Model>(entry).is_err());
    }
}
