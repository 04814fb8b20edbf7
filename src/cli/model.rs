//! `idunno model …`: register and inspect models.

use clap::{Args, Subcommand};
use idunno_api::model::{Model, NewModel};

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
    /// Register (or replace) a model.
    Add {
        name: String,
        /// resnet18|resnet34|resnet50|resnet101|resnet152|inception_v3|efficientnet_lite0
        #[arg(long)]
        arch: String,
        /// SDFS name of the weights (safetensors).
        #[arg(long)]
        weights: String,
        /// Input side in pixels (default: the architecture's).
        #[arg(long)]
        input_size: Option<u32>,
    },
    /// List registered models.
    List,
    /// Show one model and the workers that have it loaded.
    Show { name: String },
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
        } => {
            let body = NewModel {
                name,
                arch,
                weights,
                input_size,
            };
            vec![client.post("/v1/models", &body).await?]
        }
        ModelCmd::List => client.get("/v1/models").await?,
        ModelCmd::Show { name } => vec![client.get(&format!("/v1/models/{name}")).await?],
        ModelCmd::Delete { name } => {
            client.delete(&format!("/v1/models/{name}")).await?;
            println!("deleted model {name}");
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
                m.arch.clone(),
                m.input_size.to_string(),
                m.weights.clone(),
                m.loaded_on.join(","),
            ]
        })
        .collect();
    println!(
        "{}",
        render(&["name", "arch", "input", "weights", "loaded on"], &rows)
    );
    Ok(())
}
