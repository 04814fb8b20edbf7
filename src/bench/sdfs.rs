//! `idunno bench sdfs`: three coordinator processes and four storage node processes on loopback,
//! each with its own sled folder. (a) put and get throughput of one large file with R=3, through
//! the leader, the client hashing what it gets back; (b) repair: files are put with R=3, a
//! storage node holding replicas of them is killed with SIGKILL, and the time until the
//! namespace marks it dead (detection) and until every file it held has three live replicas
//! again (repair) is measured; copy = repair − detection.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use futures::StreamExt;
use idunno_api::client::encode_path;
use idunno_api::file::{FileVersion, ReplicaSet, StorageNode};
use idunno_api::Client;
use reqwest::Method;

use super::summary;
use idunno::processes::{CoordinatorGroup, StorageNodeProcess};

/// Replicas of every file the benchmark puts.
const REPLICAS: usize = 3;
/// Throughput figures are in MB/s of 10^6 bytes.
const MB: f64 = 1e6;
const MIB: u64 = 1 << 20;
/// Body pieces of a put.
const PIECE: usize = 256 << 10;
/// Polling period of the repair phase.
const POLL: Duration = Duration::from_millis(10);
/// Longest wait for anything the benchmark waits on.
const PATIENCE: Duration = Duration::from_secs(120);

/// Goals (issue text): put ≥ 100 MB/s, get ≥ 300 MB/s, detection < 1 s, copy < 2 s.
const GOAL_PUT: f64 = 100.0;
const GOAL_GET: f64 = 300.0;
const GOAL_DETECT: f64 = 1.0;
const GOAL_COPY: f64 = 2.0;

#[derive(Debug, Args)]
pub struct SdfsBench {
    /// Size of the throughput file (MiB).
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Put+get rounds of the throughput phase (0 skips it).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Storage node kills in the repair phase (0 skips it).
    #[arg(long, default_value_t = 3)]
    repairs: usize,
    /// Data put before each kill (MiB), in --repair-files files of equal size.
    #[arg(long, default_value_t = 40)]
    repair_mib: u64,
    /// How many files the repair data is split into.
    #[arg(long, default_value_t = 10)]
    repair_files: u64,
    /// Storage nodes (at least 4, so that a killed node's replicas have somewhere to go).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// A flag passed to every coordinator, e.g. `--coordinator-flag=--node-timeout-ms=400`
    /// (repeatable).
    #[arg(long = "coordinator-flag", allow_hyphen_values = true)]
    coordinator_flags: Vec<String>,
    /// Where the data folders go (default: the system temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Figures collected for the closing summary.
#[derive(Default)]
struct Figures {
    put: Vec<f64>,
    get: Vec<f64>,
    detect: Vec<f64>,
    copy: Vec<f64>,
    repair: Vec<f64>,
}

pub async fn run(args: SdfsBench) -> anyhow::Result<()> {
    ensure!(
        args.nodes > REPLICAS || args.repairs == 0,
        "the repair phase needs more than {REPLICAS} storage nodes"
    );
    ensure!(args.repair_files > 0, "--repair-files must be at least 1");
    let group = CoordinatorGroup::start_with(3, args.dir.as_deref(), &args.coordinator_flags)?;
    let leader = group.wait_for_leader(Duration::from_secs(20)).await?;
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let mut node = StorageNodeProcess::new(&format!("s{i}"), group.dir(), &group.addrs())?;
        node.start()?;
        nodes.push(node);
    }
    // The leader first: puts are then not forwarded by a follower.
    let mut order = vec![leader.addr.clone()];
    order.extend(group.addrs().into_iter().filter(|a| *a != leader.addr));
    let client = Client::new(&order, None)?.with_deadline(Duration::from_secs(60));
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    wait_nodes_alive(&client, &ids).await?;
    println!(
        "3 coordinators and {} storage nodes up (data under {}); leader is node {}",
        nodes.len(),
        group.dir().display(),
        leader.node_id
    );

    let mut figures = Figures::default();
    if args.rounds > 0 {
        throughput(&args, &client, &mut figures).await?;
    }
    if args.repairs > 0 {
        repairs(&args, &client, &mut nodes, &mut figures).await?;
    }
    print_goals(&args, &figures);
    // The nodes go before the group, whose drop removes the folder they write in.
    drop(nodes);
    drop(group);
    Ok(())
}

/// (a) put and get of one large file, `--rounds` times.
async fn throughput(args: &SdfsBench, client: &Client, f: &mut Figures) -> anyhow::Result<()> {
    let size = (args.mib * MIB) as usize;
    println!(
        "\n## put and get of a {} MiB file, R={REPLICAS} (MB = 10^6 bytes)",
        args.mib
    );
    println!("| round | put | put, until {REPLICAS} replicas | get (hash checked) |");
    println!("|---|---|---|---|");
    for round in 0..args.rounds {
        let name = format!("bench/big-{round}");
        let data = Arc::new(content(size, round as u64 + 1));
        let hash = blake3::hash(&data).to_hex().to_string();

        let t = Instant::now();
        let version = put(client, &name, data).await?;
        let put_s = t.elapsed().as_secs_f64();
        ensure!(
            version.hash == hash && version.size == size as u64,
            "the put stored {} bytes hashing {}, not {size} hashing {hash}",
            version.size,
            version.hash
        );
        wait_files(client, std::slice::from_ref(&name), |s| {
            live(s, None) >= REPLICAS
        })
        .await?;
        let all_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let (got, got_hash) = get(client, &name).await?;
        let get_s = t.elapsed().as_secs_f64();
        ensure!(
            got == size as u64 && got_hash == hash,
            "the get returned {got} bytes hashing {got_hash}, not {size} hashing {hash}"
        );
        client
            .delete(&format!("/v1/files/{}", encode_path(&name)))
            .await?;

        let (put_rate, all_rate, get_rate) = (
            size as f64 / MB / put_s,
            size as f64 / MB / all_s,
            size as f64 / MB / get_s,
        );
        f.put.push(put_rate);
        f.get.push(get_rate);
        println!(
            "| {} | {put_rate:.0} MB/s ({put_s:.2} s) | {all_rate:.0} MB/s ({all_s:.2} s) | {get_rate:.0} MB/s ({get_s:.2} s) |",
            round + 1
        );
        // Let the freed blobs be deleted before the next round.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (pm, pp, px) = summary(&f.put);
    let (gm, gp, gx) = summary(&f.get);
    println!(
        "\nput over {} rounds: mean {pm:.0} MB/s, p50 {pp:.0} MB/s, max {px:.0} MB/s",
        f.put.len()
    );
    println!(
        "get over {} rounds: mean {gm:.0} MB/s, p50 {gp:.0} MB/s, max {gx:.0} MB/s",
        f.get.len()
    );
    Ok(())
}

/// (b) kill a storage node holding replicas, `--repairs` times, and time detection and copy.
async fn repairs(
    args: &SdfsBench,
    client: &Client,
    nodes: &mut [StorageNodeProcess],
    f: &mut Figures,
) -> anyhow::Result<()> {
    let per_file = (args.repair_mib * MIB / args.repair_files) as usize;
    println!(
        "\n## repair after SIGKILL of a storage node ({} file{} of {:.1} MiB, R={REPLICAS}; \
         polled every {} ms)",
        args.repair_files,
        if args.repair_files == 1 { "" } else { "s" },
        per_file as f64 / MIB as f64,
        POLL.as_millis()
    );
    println!(
        "| round | killed | files on it | MiB to copy | detection | copy | repair | copy rate |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for round in 0..args.repairs {
        let names: Vec<String> = (0..args.repair_files)
            .map(|i| format!("bench/repair-{round}/f{i:02}"))
            .collect();
        for (i, name) in names.iter().enumerate() {
            let seed = 1_000 + (round as u64) * 1_000 + i as u64;
            put(client, name, Arc::new(content(per_file, seed))).await?;
        }
        let sets = wait_files(client, &names, |s| live(s, None) >= REPLICAS).await?;

        // The victim: a node holding the most of these bytes (a different one each round
        // when several do).
        let mut held: BTreeMap<&str, u64> = BTreeMap::new();
        for set in &sets {
            for r in &set.replicas {
                *held.entry(r.node.as_str()).or_default() += set.size;
            }
        }
        let most = held.values().copied().max().context("no replicas")?;
        let candidates: Vec<&str> = held
            .iter()
            .filter(|(_, bytes)| **bytes == most)
            .map(|(id, _)| *id)
            .collect();
        let victim = candidates[round % candidates.len()].to_string();
        let affected: Vec<String> = sets
            .iter()
            .filter(|s| s.replicas.iter().any(|r| r.node == victim))
            .map(|s| s.name.clone())
            .collect();
        let to_copy = held[victim.as_str()];
        let index = nodes
            .iter()
            .position(|n| n.id == victim)
            .context("the victim is not one of our nodes")?;

        nodes[index].kill();
        let t0 = Instant::now();
        loop {
            let list: Vec<StorageNode> = client.get("/v1/nodes?stale=true").await?;
            if list.iter().any(|n| n.id == victim && !n.alive) {
                break;
            }
            if t0.elapsed() > PATIENCE {
                bail!("{victim} was not declared dead after {PATIENCE:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        let detect = t0.elapsed().as_secs_f64();
        let mut pending = affected.clone();
        while !pending.is_empty() {
            let sets =
                futures::future::join_all(pending.iter().map(|n| replica_set(client, n))).await;
            let mut still = Vec::new();
            for (name, set) in pending.iter().zip(sets) {
                if live(&set?, Some(&victim)) < REPLICAS {
                    still.push(name.clone());
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if t0.elapsed() > PATIENCE {
                bail!("{} files not repaired after {PATIENCE:?}", pending.len());
            }
            tokio::time::sleep(POLL).await;
        }
        let repair = t0.elapsed().as_secs_f64();
        let copy = repair - detect;
        let mib = to_copy as f64 / MIB as f64;
        f.detect.push(detect);
        f.copy.push(copy);
        f.repair.push(repair);
        println!(
            "| {} | {victim} | {} of {} | {mib:.1} | {detect:.3} s | {copy:.3} s | {repair:.3} s | {:.0} MB/s |",
            round + 1,
            affected.len(),
            names.len(),
            to_copy as f64 / MB / copy.max(1e-9)
        );

        // Bring the node back, let the surplus copies be trimmed, and clean up.
        nodes[index].start()?;
        wait_nodes_alive(client, std::slice::from_ref(&victim)).await?;
        wait_files(client, &names, |s| live(s, None) == REPLICAS).await?;
        for name in &names {
            client
                .delete(&format!("/v1/files/{}", encode_path(name)))
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (dm, dp, dx) = summary(&f.detect);
    let (cm, cp, cx) = summary(&f.copy);
    let (rm, rp, rx) = summary(&f.repair);
    println!("\nover {} kills:", f.detect.len());
    println!("| | mean | p50 | max |");
    println!("|---|---|---|---|");
    println!("| detection | {dm:.3} s | {dp:.3} s | {dx:.3} s |");
    println!("| copy | {cm:.3} s | {cp:.3} s | {cx:.3} s |");
    println!("| repair (kill → all live again) | {rm:.3} s | {rp:.3} s | {rx:.3} s |");
    Ok(())
}

/// One line per goal, judged on the p50 (throughput) or the maximum (times).
fn print_goals(args: &SdfsBench, f: &Figures) {
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut parts = Vec::new();
    if !f.put.is_empty() {
        let (_, put, _) = summary(&f.put);
        let (_, get, _) = summary(&f.get);
        parts.push(format!(
            "put p50 {put:.0} MB/s (goal ≥ {GOAL_PUT:.0}: {})",
            mark(put >= GOAL_PUT)
        ));
        parts.push(format!(
            "get p50 {get:.0} MB/s (goal ≥ {GOAL_GET:.0}: {})",
            mark(get >= GOAL_GET)
        ));
    }
    if !f.detect.is_empty() {
        let (_, _, detect) = summary(&f.detect);
        let (_, _, copy) = summary(&f.copy);
        parts.push(format!(
            "detection max {detect:.3} s (goal < {GOAL_DETECT} s: {})",
            mark(detect < GOAL_DETECT)
        ));
        parts.push(format!(
            "copy max {copy:.3} s of ≤ {} MiB (goal < {GOAL_COPY} s: {})",
            args.repair_mib,
            mark(copy < GOAL_COPY)
        ));
    }
    println!("\nsummary: {}", parts.join("; "));
}

/// Deterministic, incompressible content (xorshift64*).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for piece in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        piece.copy_from_slice(&v[..piece.len()]);
    }
    out
}

/// Puts `data` as `name` with R=3, streamed from memory in 256 KiB pieces.
async fn put(client: &Client, name: &str, data: Arc<Vec<u8>>) -> anyhow::Result<FileVersion> {
    let path = format!("/v1/files/{}?replicas={REPLICAS}", encode_path(name));
    let len = data.len();
    let resp = client
        .send(Method::PUT, &path, |req| {
            let data = data.clone();
            let pieces = futures::stream::iter((0..len.div_ceil(PIECE)).map(move |i| {
                let end = ((i + 1) * PIECE).min(len);
                Ok::<_, std::io::Error>(data[i * PIECE..end].to_vec())
            }));
            req.timeout(Duration::from_secs(600))
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(pieces))
        })
        .await
        .with_context(|| format!("put {name}"))?;
    Ok(resp.json().await?)
}

/// Gets `name` (streamed): its length and BLAKE3 hash.
async fn get(client: &Client, name: &str) -> anyhow::Result<(u64, String)> {
    let resp = client
        .download(name, None)
        .await
        .with_context(|| format!("get {name}"))?;
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.with_context(|| format!("get {name} broke off"))?;
        len += piece.len() as u64;
        hasher.update(&piece);
    }
    Ok((len, hasher.finalize().to_hex().to_string()))
}

/// `GET /v1/files/{name}/replicas` from the first coordinator that answers (the leader, as
/// long as it leads) — its own applied state, no read barrier.
async fn replica_set(client: &Client, name: &str) -> anyhow::Result<ReplicaSet> {
    Ok(client
        .get(&format!(
            "/v1/files/{}/replicas?stale=true",
            encode_path(name)
        ))
        .await?)
}

/// Live replicas of a set, not counting node `except`.
fn live(set: &ReplicaSet, except: Option<&str>) -> usize {
    set.replicas
        .iter()
        .filter(|r| r.alive && Some(r.node.as_str()) != except)
        .count()
}

/// Waits until every file's replica set passes `done`; returns the last sets.
async fn wait_files(
    client: &Client,
    names: &[String],
    done: impl Fn(&ReplicaSet) -> bool,
) -> anyhow::Result<Vec<ReplicaSet>> {
    let started = Instant::now();
    loop {
        let mut sets = Vec::with_capacity(names.len());
        for name in names {
            sets.push(replica_set(client, name).await?);
        }
        if sets.iter().all(&done) {
            return Ok(sets);
        }
        if started.elapsed() > PATIENCE {
            bail!("replicas did not settle after {PATIENCE:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the namespace lists these storage nodes as alive.
async fn wait_nodes_alive(client: &Client, ids: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(list) = client.get::<Vec<StorageNode>>("/v1/nodes").await {
            if ids
                .iter()
                .all(|id| list.iter().any(|n| n.id == *id && n.alive))
            {
                return Ok(());
            }
        }
        if started.elapsed() > PATIENCE {
            bail!("storage nodes {ids:?} not alive after {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
