//! The model registry in the replicated state: name → architecture, input size, weights file.

use idunno_api::arch::Arch;
use idunno_api::model::{
    OnlineBatching, MAX_ONLINE_BATCH, MAX_ONLINE_DELAY_MS, MAX_SYNTHETIC_COST_MS,
};
use idunno_api::Millis;
use serde::{Deserialize, Serialize};

use super::command::CommandError;
use super::{Key, State};

/// A registered model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: String,
    pub arch: Arch,
    /// SDFS name of the weights file (safetensors).
    pub weights: String,
    pub input_size: u32,
    pub created_at_ms: Millis,
    /// Every worker should load it now (`POST /v1/models/{name}/load`, the original "train"
    /// phase) rather than on its first batch.
    #[serde(default)]
    pub preload: bool,
    /// Declared CPU milliseconds per query of a `synthetic` model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_ms: Option<u32>,
    /// How online requests are batched (unset: the coordinator's defaults).
    #[serde(default)]
    pub online: OnlineBatching,
}

impl ModelRecord {
    /// The API view, with the workers that have it loaded and the scheduler's cost estimate.
    pub fn to_api(
        &self,
        loaded_on: Vec<String>,
        cost_ms_per_query: f64,
    ) -> idunno_api::model::Model {
        idunno_api::model::Model {
            name: self.name.clone(),
            arch: self.arch,
            weights: self.weights.clone(),
            input_size: self.input_size,
            created_at_ms: self.created_at_ms,
            loaded_on,
            cost_ms: self.cost_ms,
            cost_ms_per_query,
            online: self.online,
        }
    }
}

/// Checks a registration before it is proposed or applied.
pub fn validate(
    name: &str,
    arch: Arch,
    weights: &str,
    input_size: u32,
    cost_ms: Option<u32>,
) -> Result<(), CommandError> {
    match (arch == Arch::Synthetic, cost_ms) {
        (true, None) => {
            return Err(CommandError::Invalid(format!(
                "a synthetic model needs cost_ms (CPU milliseconds per query, 1..={MAX_SYNTHETIC_COST_MS})"
            )))
        }
        (true, Some(ms)) if ms == 0 || ms > MAX_SYNTHETIC_COST_MS => {
            return Err(CommandError::Invalid(format!(
                "cost_ms must be in 1..={MAX_SYNTHETIC_COST_MS}, not {ms}"
            )))
        }
        (false, Some(_)) => {
            return Err(CommandError::Invalid(format!(
                "cost_ms is declared by synthetic models only; {arch:?} is measured"
            )))
        }
        _ => {}
    }
    if name.is_empty() || name.len() > 128 || !name.chars().all(name_char) {
        return Err(CommandError::Invalid(format!(
            "model name {name:?} must be 1-128 characters of a-z, A-Z, 0-9, '.', '_' or '-'"
        )));
    }
    if weights.is_empty() {
        return Err(CommandError::Invalid("weights must name a file".into()));
    }
    if !(32..=1024).contains(&input_size) {
        return Err(CommandError::Invalid(format!(
            "input_size {input_size} is outside 32..=1024"
        )));
    }
    Ok(())
}

/// Checks a model's online batching.
pub fn validate_online(online: &OnlineBatching) -> Result<(), CommandError> {
    if let Some(n) = online
        .max_batch_size
        .filter(|n| !(1..=MAX_ONLINE_BATCH).contains(n))
    {
        return Err(CommandError::Invalid(format!(
            "online.max_batch_size must be in 1..={MAX_ONLINE_BATCH}, not {n}"
        )));
    }
    if let Some(ms) = online
        .max_queue_delay_ms
        .filter(|ms| *ms > MAX_ONLINE_DELAY_MS)
    {
        return Err(CommandError::Invalid(format!(
            "online.max_queue_delay_ms must be at most {MAX_ONLINE_DELAY_MS}, not {ms}"
        )));
    }
    Ok(())
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl State {
    pub(super) fn put_model(
        &mut self,
        name: String,
        arch: Arch,
        weights: String,
        input_size: u32,
        (cost_ms, online): (Option<u32>, OnlineBatching),
        now: Millis,
    ) -> Result<ModelRecord, CommandError> {
        validate(&name, arch, &weights, input_size, cost_ms)?;
        validate_online(&online)?;
        let previous = self.models.get(&name);
        let created_at_ms = previous.map(|m| m.created_at_ms).unwrap_or(now);
        let preload = previous.is_some_and(|m| m.preload);
        let record = ModelRecord {
            name: name.clone(),
            arch,
            weights,
            input_size,
            created_at_ms,
            preload,
            cost_ms,
            online,
        };
        self.models.insert(name.clone(), record.clone());
        self.touch(Key::Model(name));
        Ok(record)
    }

    pub(super) fn preload_model(&mut self, name: &str) -> Result<ModelRecord, CommandError> {
        let model = self
            .models
            .get_mut(name)
            .ok_or_else(|| CommandError::NotFound(format!("no model named {name:?}")))?;
        model.preload = true;
        let record = model.clone();
        self.touch(Key::Model(name.to_string()));
        Ok(record)
    }

    /// Models every worker should have loaded.
    pub fn preloaded_models(&self) -> impl Iterator<Item = &ModelRecord> {
        self.models.values().filter(|m| m.preload)
    }

    pub(super) fn delete_model(&mut self, name: &str) -> Result<(), CommandError> {
        if let Some(job) = self
            .jobs
            .values()
            .find(|j| j.model == name && j.state != idunno_api::job::JobState::Done)
        {
            return Err(CommandError::Conflict(format!(
                "model {name:?} is used by unfinished job {}",
                job.id
            )));
        }
        if self.models.remove(name).is_none() {
            return Err(CommandError::NotFound(format!("no model named {name:?}")));
        }
        self.touch(Key::Model(name.to_string()));
        Ok(())
    }
}
