//! `idunno sdfs …`: the original system's six file commands (put, get, delete, ls, store,
//! get-versions) plus list and put-dir, over the coordinators' `/v1/files` API.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use idunno_api::file::{FileInfo, FileVersion, ReplicaSet, StorageNode};
use idunno_api::Client;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;

use super::outln;
use super::table::{render, time};
use super::{print_json, Connection};

#[derive(Debug, Args)]
pub struct SdfsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    cmd: SdfsCmd,
}

#[derive(Debug, Subcommand)]
enum SdfsCmd {
    /// Store a local file as the next version of NAME.
    Put {
        local: PathBuf,
        name: String,
        /// Replication factor (default: the cluster's).
        #[arg(long)]
        replicas: Option<u32>,
    },
    /// Fetch NAME (newest version, or --version) into a local file.
    Get {
        name: String,
        local: PathBuf,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete NAME and all its versions.
    Delete { name: String },
    /// Which storage nodes hold NAME.
    Ls {
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// The files a storage node holds (without NODE: every node and its load).
    Store { node: Option<String> },
    /// The last N versions of NAME into one local file, separated by delimiter lines.
    GetVersions {
        name: String,
        n: u32,
        local: PathBuf,
    },
    /// List files (under a prefix).
    List { prefix: Option<String> },
    /// Upload every file of a local folder under PREFIX, with a progress bar.
    PutDir {
        local: PathBuf,
        prefix: String,
        #[arg(long)]
        replicas: Option<u32>,
        /// Uploads in flight at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
}

pub async fn run(args: SdfsArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let json = args.conn.json;
    match args.cmd {
        SdfsCmd::Put {
            local,
            name,
            replicas,
        } => {
            let v = client.upload_file(&name, &local, replicas).await?;
            if json {
                return print_json(&v);
            }
            outln!(
                "stored {} version {} ({} bytes, blake3 {}) on {}",
                v.name,
                v.version,
                v.size,
                v.hash.get(..16).unwrap_or(&v.hash),
                v.replicas.join(", ")
            );
            Ok(())
        }
        SdfsCmd::Get {
            name,
            local,
            version,
        } => {
            let v = download(&client, &name, version, &local).await?;
            outln!(
                "wrote {} ({} bytes, version {v}) to {}",
                name,
                std::fs::metadata(&local)?.len(),
                local.display()
            );
            Ok(())
        }
        SdfsCmd::Delete { name } => {
            client
                .delete(&format!(
                    "/v1/files/{}",
                    idunno_api::client::encode_path(&name)
                ))
                .await?;
            outln!("deleted {name}");
            Ok(())
        }
        SdfsCmd::Ls { name, version } => {
            let mut path = format!(
                "/v1/files/{}/replicas",
                idunno_api::client::encode_path(&name)
            );
            if let Some(v) = version {
                path.push_str(&format!("?version={v}"));
            }
            let set: ReplicaSet = client.get(&path).await?;
            if json {
                return print_json(&set);
            }
            outln!(
                "{} version {}: {} bytes, {} of {} replicas",
                set.name,
                set.version,
                set.size,
                set.replicas.iter().filter(|r| r.alive).count(),
                set.target
            );
            let rows: Vec<Vec<String>> = set
                .replicas
                .iter()
                .map(|r| {
                    vec![
                        r.node.clone(),
                        r.addr.clone(),
                        if r.alive { "alive" } else { "dead" }.into(),
                    ]
                })
                .collect();
            outln!("{}", render(&["node", "addr", "state"], &rows));
            Ok(())
        }
        SdfsCmd::Store { node: Some(node) } => {
            let files: Vec<FileVersion> = client.get(&format!("/v1/nodes/{node}/files")).await?;
            if json {
                return print_json(&files);
            }
            let rows: Vec<Vec<String>> = files
                .iter()
                .map(|f| vec![f.name.clone(), f.version.to_string(), f.size.to_string()])
                .collect();
            outln!("{}", render(&["name", "version", "bytes"], &rows));
            Ok(())
        }
        SdfsCmd::Store { node: None } => {
            let nodes: Vec<StorageNode> = client.get("/v1/nodes").await?;
            if json {
                return print_json(&nodes);
            }
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    vec![
                        n.id.clone(),
                        n.addr.clone(),
                        if n.alive { "alive" } else { "dead" }.into(),
                        n.blobs.to_string(),
                        n.bytes.to_string(),
                    ]
                })
                .collect();
            outln!(
                "{}",
                render(&["node", "addr", "state", "blobs", "bytes"], &rows)
            );
            Ok(())
        }
        SdfsCmd::GetVersions { name, n, local } => get_versions(&client, &name, n, &local).await,
        SdfsCmd::List { prefix } => {
            let prefix = prefix.unwrap_or_default();
            let files: Vec<FileInfo> = client
                .get(&format!(
                    "/v1/files?prefix={}",
                    idunno_api::client::encode_path(&prefix)
                ))
                .await?;
            if json {
                return print_json(&files);
            }
            let rows: Vec<Vec<String>> = files
                .iter()
                .map(|f| {
                    vec![
                        f.name.clone(),
                        f.latest.version.to_string(),
                        f.versions.to_string(),
                        f.latest.size.to_string(),
                        time(f.latest.created_at_ms),
                    ]
                })
                .collect();
            outln!(
                "{}",
                render(&["name", "version", "kept", "bytes", "stored"], &rows)
            );
            Ok(())
        }
        SdfsCmd::PutDir {
            local,
            prefix,
            replicas,
            parallel,
        } => put_dir(&client, &local, &prefix, replicas, parallel, |_| true).await,
    }
}

/// Streams a version into `local` (through a temporary file, renamed when the content hash
/// checks out). Returns the version read.
pub async fn download(
    client: &Client,
    name: &str,
    version: Option<u64>,
    local: &Path,
) -> anyhow::Result<u64> {
    let resp = client.download(name, version).await?;
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let hash =
        header(idunno_api::headers::HASH_HEADER).context("the answer has no content hash")?;
    let got_version = header(idunno_api::headers::VERSION_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let tmp = local.with_extension("idunno-part");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download broke off")?;
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    drop(file);
    if hasher.finalize().to_hex().as_str() != hash {
        let _ = std::fs::remove_file(&tmp);
        bail!("the downloaded bytes do not match the content hash; nothing written");
    }
    std::fs::rename(&tmp, local)?;
    Ok(got_version)
}

/// The original system's get-versions: the last `n` versions, newest first, in one file, each
/// preceded by a delimiter line naming it.
async fn get_versions(client: &Client, name: &str, n: u32, local: &Path) -> anyhow::Result<()> {
    if n == 0 {
        bail!("N must be at least 1");
    }
    let path = format!(
        "/v1/files/{}/versions?n={n}",
        idunno_api::client::encode_path(name)
    );
    let versions: Vec<FileVersion> = client.get(&path).await?;
    let mut out = tokio::fs::File::create(local)
        .await
        .with_context(|| format!("cannot write {}", local.display()))?;
    let tmp_dir = tempfile::tempdir()?;
    for v in &versions {
        let part = tmp_dir.path().join(format!("v{}", v.version));
        download(client, name, Some(v.version), &part).await?;
        let line = format!(
            "===== {} version {} ({} bytes, stored {}) =====\n",
            v.name,
            v.version,
            v.size,
            time(v.created_at_ms)
        );
        out.write_all(line.as_bytes()).await?;
        // Streamed, not read whole: a version may be far bigger than memory.
        let mut verified = tokio::fs::File::open(&part)
            .await
            .with_context(|| format!("cannot read {}", part.display()))?;
        tokio::io::copy(&mut verified, &mut out).await?;
        drop(verified);
        let _ = tokio::fs::remove_file(&part).await;
        out.write_all(b"\n").await?;
    }
    out.flush().await?;
    outln!(
        "wrote {} version(s) of {name} to {}",
        versions.len(),
        local.display()
    );
    Ok(())
}

/// Every regular file under `dir`, relative paths sorted. Symbolic links are followed, as
/// `cp -rL` and upload tools do (a linked folder once: a link back up the tree is no loop);
/// links that lead nowhere are listed apart, for the caller to report.
fn files_in(dir: &Path) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut out = Vec::new();
    let mut broken = Vec::new();
    let mut seen = std::collections::HashSet::new();
    seen.insert(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let mut kind = entry.file_type()?;
            if kind.is_symlink() {
                match std::fs::metadata(&path) {
                    Ok(target) => kind = target.file_type(),
                    Err(_) => {
                        broken.push(path.strip_prefix(dir)?.to_path_buf());
                        continue;
                    }
                }
            }
            if kind.is_dir() {
                let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                if seen.insert(real) {
                    stack.push(path);
                }
            } else if kind.is_file() {
                out.push(path.strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    out.sort();
    broken.sort();
    Ok((out, broken))
}

/// The SDFS name of local file `rel` (relative to the folder) under `prefix`: an empty prefix
/// (or one of slashes only) is no prefix, and slashes around it are dropped.
fn sdfs_name(prefix: &str, rel: &Path) -> String {
    let rel = rel.to_string_lossy().replace('\\', "/");
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        rel
    } else {
        format!("{prefix}/{rel}")
    }
}

/// Uploads the files of a folder that `keep` accepts under `prefix`.
pub async fn put_dir(
    client: &Client,
    dir: &Path,
    prefix: &str,
    replicas: Option<u32>,
    parallel: usize,
    keep: impl Fn(&Path) -> bool,
) -> anyhow::Result<()> {
    let (mut files, broken) = files_in(dir)?;
    if !broken.is_empty() {
        let names: Vec<String> = broken.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "skipped {} symbolic link(s) that lead nowhere: {}",
            broken.len(),
            names.join(", ")
        );
    }
    files.retain(|f| keep(f));
    if files.is_empty() {
        bail!("{} has no files", dir.display());
    }
    let prefix = prefix.trim_matches('/');
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let results: Vec<anyhow::Result<FileVersion>> = futures::stream::iter(files)
        .map(|rel| {
            let client = client.clone();
            let bar = bar.clone();
            let name = sdfs_name(prefix, &rel);
            let local = dir.join(&rel);
            async move {
                let v = client
                    .upload_file(&name, &local, replicas)
                    .await
                    .with_context(|| format!("{}", local.display()));
                bar.inc(1);
                bar.set_message(name);
                v
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    let bytes: u64 = ok.iter().flatten().map(|v| v.size).sum();
    let under = if prefix.is_empty() {
        String::new()
    } else {
        format!(" under {prefix}/")
    };
    outln!("stored {} file(s), {bytes} bytes{under}", ok.len());
    if let Some(Err(e)) = failed.into_iter().next() {
        bail!("some files were not stored: {e:#}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn symbolic_links_are_followed_once_and_broken_ones_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.png"), b"a").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("b.png"), b"b").unwrap();
        std::os::unix::fs::symlink(outside.path().join("b.png"), root.join("b.png")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linked")).unwrap();
        std::os::unix::fs::symlink(root, root.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("gone"), root.join("broken.png")).unwrap();
        let (files, broken) = files_in(root).unwrap();
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["b.png", "linked/b.png", "sub/a.png"]);
        assert_eq!(broken, [PathBuf::from("broken.png")]);
    }

    #[test]
    fn put_dir_names_have_no_stray_slashes() {
        let rel = Path::new("a/b.png");
        assert_eq!(sdfs_name("", rel), "a/b.png");
        assert_eq!(sdfs_name("/", rel), "a/b.png");
        assert_eq!(sdfs_name("images", rel), "images/a/b.png");
        assert_eq!(sdfs_name("/images/", rel), "images/a/b.png");
        assert_eq!(sdfs_name("x/y//", rel), "x/y/a/b.png");
    }
}
