//! A network partition between real processes: three coordinator processes, each in a Linux
//! network namespace of its own with its own address, joined by a bridge (veth pairs). The
//! leader's link is taken down: it must stop acting as leader and commit nothing, the other two
//! elect a leader and go on committing, and once the link is back the old leader follows and
//! catches up. Needs root (CI runs as root); where namespaces cannot be made, the test says so
//! and does nothing.

use crate::common;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idunno_api::cluster::ClusterStatus;

/// Runs `ip ARGS…`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Three namespaces on one bridge: namespace `i` (1-based) has address `prefix.i`, the bridge
/// (in this namespace) `prefix.254`. Everything is removed on drop.
struct Hosts {
    tag: String,
    prefix: String,
}

impl Hosts {
    fn create() -> Result<Hosts, String> {
        let pid = std::process::id();
        let hosts = Hosts {
            tag: format!("idn{}", pid % 100_000),
            prefix: format!("10.213.{}", pid % 250),
        };
        let br = hosts.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", hosts.prefix),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 1..=3 {
            let (ns, host_end, ns_end) = (hosts.ns(i), hosts.host_end(i), hosts.ns_end(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "master", &br])?;
            ip(&["link", "set", &host_end, "up"])?;
            let addr = format!("{}/24", hosts.addr(i));
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &ns_end,
            ])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_end, "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }
    fn ns(&self, i: u64) -> String {
        format!("{}n{i}", self.tag)
    }
    fn host_end(&self, i: u64) -> String {
        format!("{}h{i}", self.tag)
    }
    fn ns_end(&self, i: u64) -> String {
        format!("{}v{i}", self.tag)
    }
    fn addr(&self, i: u64) -> String {
        format!("{}.{i}", self.prefix)
    }
    fn coordinator(&self, i: u64) -> String {
        format!("{}:7001", self.addr(i))
    }

    /// Cuts host `i` off the bridge, or puts it back.
    fn link(&self, i: u64, up: bool) {
        ip(&[
            "link",
            "set",
            &self.host_end(i),
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }

    /// Starts coordinator `i` in its namespace.
    fn start(&self, i: u64, data: &Path) -> Child {
        let peers = (1..=3)
            .map(|j| format!("{j}={}", self.coordinator(j)))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::File::create(data.join(format!("c{i}.log"))).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.ns(i), env!("CARGO_BIN_EXE_idunno")])
            .args(["coordinator", "--id", &i.to_string()])
            .args(["--listen", &self.coordinator(i), "--peers", &peers])
            // Namespace addresses are not loopback: an open API must be asked for.
            .arg("--open")
            .arg("--data")
            .arg(data.join(format!("c{i}")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// `GET /v1/cluster` of coordinator `i`, asked from inside its namespace (it is reachable
    /// there even when cut off).
    fn status(&self, i: u64) -> Option<ClusterStatus> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "curl", "-fsS", "-m", "2"])
            .arg(format!("http://{}/v1/cluster", self.coordinator(i)))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 1..=3 {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.host_end(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Polls `check` every 100 ms for up to 30 s.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_partitioned_by_the_network_steps_down_and_catches_up() {
    let _cpu = common::cpu_shared().await;
    let hosts = match Hosts::create() {
        Ok(hosts) => hosts,
        Err(e) => {
            eprintln!("SKIPPED: cannot make network namespaces here ({e}); nothing tested");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut children: Vec<Child> = (1..=3).map(|i| hosts.start(i, dir.path())).collect();
    let outcome = std::panic::AssertUnwindSafe(partition(&hosts));
    let result = futures::FutureExt::catch_unwind(outcome).await;
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Err(panic) = result {
        for i in 1..=3 {
            let log = std::fs::read_to_string(dir.path().join(format!("c{i}.log")));
            eprintln!("coordinator {i}:\n{}", log.unwrap_or_default());
        }
        std::panic::resume_unwind(panic);
    }
}

async fn partition(hosts: &Hosts) {
    let leader = eventually("a leader", || {
        (1..=3)
            .filter_map(|i| hosts.status(i))
            .find(|s| s.role == "leader")
            .map(|s| s.node_id)
    });
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let majority = idunno_api::Client::new(
        &others
            .iter()
            .map(|i| hosts.coordinator(*i))
            .collect::<Vec<_>>(),
        None,
    )
    .unwrap()
    .with_deadline(Duration::from_secs(30));
    let model = |name: String| serde_json::json!({"name": name, "arch": "resnet18", "weights": "models/w.safetensors"});
    let _: serde_json::Value = majority
        .post("/v1/models", &model("before".into()))
        .await
        .unwrap();

    hosts.link(leader, false);
    let cut_commit = hosts.status(leader).unwrap().commit_index;
    eventually("the cut-off leader to step down", || {
        hosts
            .status(leader)
            .filter(|s| s.role != "leader")
            .map(|_| ())
    });
    // The majority elects a leader of its own and commits.
    for n in 0..5 {
        let _: serde_json::Value = majority
            .post("/v1/models", &model(format!("during-{n}")))
            .await
            .unwrap();
    }
    let new = hosts.status(others[0]).unwrap();
    assert!(new.leader_id.is_some_and(|l| l != leader), "{new:?}");
    assert_eq!(
        hosts.status(leader).unwrap().commit_index,
        cut_commit,
        "the cut-off node committed nothing"
    );

    hosts.link(leader, true);
    let target = hosts.status(new.leader_id.unwrap()).unwrap().commit_index;
    eventually("the old leader to follow and catch up", || {
        hosts
            .status(leader)
            .filter(|s| s.role == "follower" && s.applied_index >= target)
            .map(|_| ())
    });
    let models: Vec<serde_json::Value> =
        idunno_api::Client::new(&[hosts.coordinator(leader)], None)
            .unwrap()
            .get("/v1/models?stale=true")
            .await
            .unwrap();
    assert_eq!(models.len(), 6, "{models:?}");
}
