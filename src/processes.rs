//! Real `idunno` child processes for benchmarks and crash tests: a coordinator group, storage
//! nodes and workers on free loopback ports, each with its own data folder and log file,
//! killable with SIGKILL and restartable on the same port and data.
//!
//! The processes run the `idunno` binary: this one (the benchmarks), or the one
//! [`use_binary`] names (tests, which run from a test binary).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use idunno_api::cluster::ClusterStatus;
use idunno_api::Client;

/// The `idunno` binary the processes run, when it is not this program.
static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Makes every process started from here on run `path` (tests: `CARGO_BIN_EXE_idunno`).
pub fn use_binary(path: impl Into<PathBuf>) {
    let _ = BINARY.set(path.into());
}

/// One coordinator process.
pub struct CoordinatorProcess {
    pub id: u64,
    pub addr: String,
    pub data: PathBuf,
    pub log: PathBuf,
    peers: String,
    /// More flags (e.g. timings), passed on every start.
    extra: Vec<String>,
    child: Option<Child>,
}

impl CoordinatorProcess {
    /// Starts (or restarts) the process.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = idunno_command(&self.log)?;
        cmd.args([
            "coordinator",
            "--id",
            &self.id.to_string(),
            "--listen",
            &self.addr,
        ])
        .arg("--data")
        .arg(&self.data)
        .args(["--peers", &self.peers])
        .args(&self.extra);
        let child = cmd.spawn().context("cannot start a coordinator process")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The operating system's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A group of coordinator processes under one temporary folder.
pub struct CoordinatorGroup {
    pub nodes: Vec<CoordinatorProcess>,
    _dir: tempfile::TempDir,
}

impl CoordinatorGroup {
    /// Starts `n` coordinators that form one Raft group.
    pub fn start(n: u64, under: Option<&Path>) -> anyhow::Result<CoordinatorGroup> {
        CoordinatorGroup::start_with(n, under, &[])
    }

    /// Starts `n` coordinators that form one Raft group, each with the `extra` flags.
    pub fn start_with(
        n: u64,
        under: Option<&Path>,
        extra: &[String],
    ) -> anyhow::Result<CoordinatorGroup> {
        let dir = match under {
            Some(p) => tempfile::tempdir_in(p)?,
            None => tempfile::tempdir()?,
        };
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let mut node = CoordinatorProcess {
                id,
                addr: format!("127.0.0.1:{port}"),
                data: dir.path().join(format!("c{id}")),
                log: dir.path().join(format!("c{id}.log")),
                peers: peers.clone(),
                extra: extra.to_vec(),
                child: None,
            };
            node.start()?;
            nodes.push(node);
        }
        Ok(CoordinatorGroup { nodes, _dir: dir })
    }

    /// The group's temporary folder (removed when the group is dropped).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.addrs(), None)?)
    }

    /// Waits until a running node reports a leader, and returns that leader's status.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<ClusterStatus> {
        let started = Instant::now();
        loop {
            for node in self.nodes.iter().filter(|n| n.running()) {
                let client = Client::new(std::slice::from_ref(&node.addr), None)?
                    .with_deadline(Duration::from_millis(200));
                if let Ok(status) = client.get::<ClusterStatus>("/v1/cluster").await {
                    if status.role == "leader" {
                        return Ok(status);
                    }
                }
            }
            if started.elapsed() > timeout {
                bail!("no leader after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One SDFS storage node process (`idunno sdfs-node`).
pub struct StorageNodeProcess {
    pub id: String,
    pub addr: String,
    data: PathBuf,
    log: PathBuf,
    /// Coordinator addresses, `host:port,…`.
    coordinators: String,
    child: Option<Child>,
}

impl StorageNodeProcess {
    /// A node `id` on a free loopback port with its data folder and log under `dir`; not
    /// started yet.
    pub fn new(id: &str, dir: &Path, coordinators: &[String]) -> anyhow::Result<Self> {
        Ok(StorageNodeProcess {
            id: id.to_string(),
            addr: format!("127.0.0.1:{}", free_port()?),
            data: dir.join(id),
            log: dir.join(format!("{id}.log")),
            coordinators: coordinators.join(","),
            child: None,
        })
    }

    /// Starts (or restarts, on the same port and data) the process.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = idunno_command(&self.log)?;
        cmd.args(["sdfs-node", "--id", &self.id, "--listen", &self.addr])
            .arg("--data")
            .arg(&self.data)
            .args(["--coordinators", &self.coordinators]);
        let child = cmd.spawn().context("cannot start a storage node process")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for StorageNodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One inference worker process (`idunno worker`).
pub struct WorkerProcess {
    pub name: String,
    cache: PathBuf,
    log: PathBuf,
    coordinators: String,
    /// More flags (e.g. `--threads 1`), passed on every start.
    extra: Vec<String>,
    child: Option<Child>,
}

impl WorkerProcess {
    /// A worker named `name` with its weights cache and log under `dir`; not started yet.
    pub fn new(name: &str, dir: &Path, coordinators: &[String], extra: &[String]) -> Self {
        WorkerProcess {
            name: name.to_string(),
            cache: dir.join(format!("{name}-cache")),
            log: dir.join(format!("{name}.log")),
            coordinators: coordinators.join(","),
            extra: extra.to_vec(),
            child: None,
        }
    }

    /// Starts (or restarts) the process.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = idunno_command(&self.log)?;
        cmd.args([
            "worker",
            "--name",
            &self.name,
            "--coordinators",
            &self.coordinators,
        ])
        .arg("--cache")
        .arg(&self.cache)
        .args(&self.extra);
        let child = cmd.spawn().context("cannot start a worker process")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `idunno` with stdout discarded and stderr appended to `log`.
fn idunno_command(log: &Path) -> anyhow::Result<Command> {
    let exe = match BINARY.get() {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find the idunno binary")?,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(exe);
    cmd.stdout(Stdio::null()).stderr(log);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches nothing of the
        // parent's; it only asks the kernel to SIGKILL the child when the parent dies, so a
        // benchmark or test that is killed leaves no orphan processes behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    Ok(cmd)
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
