//! `idunno model …`: register and inspect models. `model add` first puts the weights into SDFS
//! (from a local file, the seeded generator, or the Hugging Face hub) after checking that they
//! load as the architecture, so a registered model is one every worker can run. Weights
//! already in SDFS are downloaded (to a temporary file) and checked the same way before the
//! model is registered over them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use idunno_api::model::{Model, NewModel, OnlineBatching};
use idunno_api::{Client, ClientError};
use idunno_models::hub::{self, TensorNames};
use idunno_models::{weights, Arch, LoadOptions, Model as Network};

use super::outln;
use super::table::render;
use super::{print_json, Connection};

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    cmd: ModelCmd,
}

#[derive(Debug, Subcommand)]
enum ModelCmd {
    /// Put a model's weights into SDFS and register it (a new version replaces the old).
    Add {
        name: String,
        /// resnet18|resnet34|resnet50|resnet101|resnet152|inception_v3|efficientnet_lite0, or
        /// synthetic (the calibration model: give --cost-ms and --weights generate)
        #[arg(long)]
        arch: String,
        /// Where the weights come from: a local safetensors file; `sdfs:NAME` (already in
        /// SDFS); `generate[:SEED]` (seeded random weights of the right shapes, for tests);
        /// `hub[:REPO]` (the Hugging Face hub, e.g. `hub:timm/resnet50.tv_in1k`; needs the
        /// internet). A bare name that is no local file is taken as an SDFS name. Weights from
        /// anywhere are checked to load as the architecture before the model is registered.
        #[arg(long)]
        weights: String,
        /// Input side in pixels (default: the architecture's).
        #[arg(long)]
        input_size: Option<u32>,
        /// `synthetic` only: CPU milliseconds each query costs.
        #[arg(long)]
        cost_ms: Option<u32>,
        /// Online requests (/v2): images per batch at most (default: the coordinators').
        #[arg(long)]
        online_max_batch: Option<u32>,
        /// Online requests: how long the oldest may wait for others to fill its batch (ms;
        /// default: the coordinators').
        #[arg(long)]
        online_max_delay_ms: Option<u32>,
    },
    /// List registered models.
    List,
    /// Show one model and the workers that have it loaded.
    Show { name: String },
    /// Ask every worker to load a model now (before its jobs start).
    Load { name: String },
    /// Remove a model from the registry.
    Delete { name: String },
}

pub async fn run(args: ModelArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    let models: Vec<Model> = match args.cmd {
        ModelCmd::Add {
            name,
            arch,
            weights,
            input_size,
            cost_ms,
            online_max_batch,
            online_max_delay_ms,
        } => {
            let source = WeightsSource::parse(&weights);
            let shape = Shape {
                input_size,
                cost_ms,
                online: OnlineBatching {
                    max_batch_size: online_max_batch,
                    max_queue_delay_ms: online_max_delay_ms,
                },
            };
            vec![add(&client, &name, &arch, &source, shape).await?]
        }
        ModelCmd::List => client.get("/v1/models").await?,
        ModelCmd::Show { name } => vec![client.get(&model_path(&name)).await?],
        ModelCmd::Load { name } => {
            vec![
                client
                    .post(&format!("{}/load", model_path(&name)), &())
                    .await?,
            ]
        }
        ModelCmd::Delete { name } => {
            client.delete(&model_path(&name)).await?;
            outln!("deleted model {name}");
            return Ok(());
        }
    };
    if json {
        return print_json(&models);
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.arch.to_string(),
                m.input_size.to_string(),
                m.weights.clone(),
                format!("{:.1}", m.cost_ms_per_query),
                m.loaded_on.join(","),
            ]
        })
        .collect();
    outln!(
        "{}",
        render(
            &["name", "arch", "input", "weights", "ms/query", "loaded on"],
            &rows
        )
    );
    Ok(())
}

/// `/v1/models/{name}` with the name percent-encoded as one path segment (a `/` in it too),
/// so whatever a user types names one model, never another route.
pub fn model_path(name: &str) -> String {
    format!("/v1/models/{}", idunno_api::encoding::encode_segment(name))
}

/// Where `model add` takes weights from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// A safetensors file on this machine.
    Local(PathBuf),
    /// A file already in SDFS.
    Sdfs(String),
    /// The seeded generator.
    Generate(u64),
    /// A hub repository (`None`: the architecture's default one).
    Hub(Option<String>),
    /// A local file if one exists, else an SDFS name.
    Either(String),
}

impl WeightsSource {
    pub fn parse(text: &str) -> WeightsSource {
        if let Some(name) = text.strip_prefix("sdfs:") {
            return WeightsSource::Sdfs(name.to_string());
        }
        if text == "generate" {
            return WeightsSource::Generate(0);
        }
        if let Some(seed) = text.strip_prefix("generate:") {
            if let Ok(seed) = seed.parse() {
                return WeightsSource::Generate(seed);
            }
        }
        if text == "hub" {
            return WeightsSource::Hub(None);
        }
        if let Some(repo) = text.strip_prefix("hub:") {
            return WeightsSource::Hub(Some(repo.to_string()));
        }
        WeightsSource::Either(text.to_string())
    }
}

/// What a registration may set besides the weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Input side in pixels (default: the architecture's).
    pub input_size: Option<u32>,
    /// The declared CPU milliseconds per query of a synthetic model.
    pub cost_ms: Option<u32>,
    /// How online requests are batched (unset: the coordinators' defaults).
    pub online: OnlineBatching,
}

/// Puts the weights of `source` into SDFS (checked to load as `arch`), registers model `name`
/// over them, and returns the registry entry.
pub async fn add(
    client: &Client,
    name: &str,
    arch: &str,
    source: &WeightsSource,
    shape: Shape,
) -> anyhow::Result<Model> {
    let arch: Arch = arch.parse()?;
    if (arch == Arch::Synthetic) != shape.cost_ms.is_some() {
        anyhow::bail!("--cost-ms goes with --arch synthetic, and synthetic needs it");
    }
    let stored = format!("models/{name}.safetensors");
    let tmp = tempfile::tempdir()?;
    let local: PathBuf = match source {
        WeightsSource::Sdfs(sdfs) => {
            let local = download_from_sdfs(client, sdfs, tmp.path())
                .await?
                .ok_or_else(|| anyhow::anyhow!("SDFS has no file {sdfs:?}"))?;
            check_loads(arch, &local)
                .await
                .with_context(|| format!("SDFS file {sdfs:?}"))?;
            return register(client, name, arch, sdfs, shape).await;
        }
        WeightsSource::Either(text) if !Path::new(text).exists() => {
            let local = download_from_sdfs(client, text, tmp.path())
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!("{text:?} is neither a local file nor a file in SDFS")
                })?;
            check_loads(arch, &local)
                .await
                .with_context(|| format!("SDFS file {text:?}"))?;
            return register(client, name, arch, text, shape).await;
        }
        WeightsSource::Either(path) => PathBuf::from(path),
        WeightsSource::Local(path) => path.clone(),
        WeightsSource::Generate(seed) => {
            let path = tmp.path().join("generated.safetensors");
            let seed = *seed;
            let out = path.clone();
            tokio::task::spawn_blocking(move || weights::generate(arch, seed, &out)).await??;
            path
        }
        WeightsSource::Hub(repo) => download_from_hub(arch, repo.as_deref(), tmp.path()).await?,
    };
    check_loads(arch, &local).await?;
    let version = client
        .upload_file(&stored, &local, None)
        .await
        .with_context(|| format!("cannot store the weights as {stored}"))?;
    register(client, name, arch, &version.name, shape).await
}

async fn register(
    client: &Client,
    name: &str,
    arch: Arch,
    weights: &str,
    shape: Shape,
) -> anyhow::Result<Model> {
    let body = NewModel {
        name: name.to_string(),
        arch,
        weights: weights.to_string(),
        input_size: shape.input_size,
        cost_ms: shape.cost_ms,
        online: shape.online,
    };
    Ok(client.post("/v1/models", &body).await?)
}

/// Streams the newest version of SDFS file `name` into a file in `dir`; `None` if SDFS has
/// no such file. Weights run to hundreds of MB: they go to disk, not memory.
async fn download_from_sdfs(
    client: &Client,
    name: &str,
    dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    let mut response = match client.download(name, None).await {
        Ok(response) => response,
        Err(ClientError::Api { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {name:?} from SDFS")),
    };
    let local = dir.join("sdfs.safetensors");
    let mut file = tokio::fs::File::create(&local).await?;
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading {name:?} from SDFS broke off"))?
    {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    Ok(Some(local))
}

/// Loads the weights as the architecture once (off the async threads): a file that lacks a
/// tensor or has a wrong shape is refused here, with the tensor's name, not on every worker.
async fn check_loads(arch: Arch, path: &Path) -> anyhow::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Network::load(arch, &path, &LoadOptions::default()).map(|_| ())
    })
    .await?
    .with_context(|| format!("the weights do not fit {}", arch.name()))
}

/// Downloads a hub repository's `model.safetensors` and rewrites it under native names.
async fn download_from_hub(arch: Arch, repo: Option<&str>, dir: &Path) -> anyhow::Result<PathBuf> {
    let default = hub::default_weights(arch)
        .ok_or_else(|| anyhow::anyhow!("{arch} has no weights on the hub; use generate"))?;
    let (url, names) = match repo {
        None => (default.url(), default.tensor_names),
        Some(repo) => {
            // timm's EfficientNet-Lite0 ports use timm's names; everything else is native.
            let names = if arch == Arch::EfficientNetLite0 && repo.starts_with("timm/") {
                TensorNames::Timm
            } else {
                TensorNames::Native
            };
            (hub::download_url(repo, "model.safetensors", "main"), names)
        }
    };
    eprintln!("downloading {url}");
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut resp = http
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot download {url}"))?;
    let raw = dir.join("hub.safetensors");
    let mut file = tokio::fs::File::create(&raw).await?;
    while let Some(chunk) = resp.chunk().await? {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    let native = dir.join("native.safetensors");
    let (src, dst) = (raw.clone(), native.clone());
    tokio::task::spawn_blocking(move || hub::to_native(arch, names, &src, &dst)).await??;
    Ok(native)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sources_parse() {
        use WeightsSource::*;
        assert_eq!(
            WeightsSource::parse("sdfs:models/a.st"),
            Sdfs("models/a.st".into())
        );
        assert_eq!(WeightsSource::parse("generate"), Generate(0));
        assert_eq!(WeightsSource::parse("generate:42"), Generate(42));
        assert_eq!(WeightsSource::parse("hub"), Hub(None));
        assert_eq!(
            WeightsSource::parse("hub:timm/x"),
            Hub(Some("timm/x".into()))
        );
        assert_eq!(
            WeightsSource::parse("w.safetensors"),
            Either("w.safetensors".into())
        );
        assert_eq!(
            WeightsSource::parse("generate:x"),
            Either("generate:x".into())
        );
    }
}
