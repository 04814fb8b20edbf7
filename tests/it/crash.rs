//! Crashes, for real: coordinators run as `idunno` processes and die by SIGKILL; storage nodes
//! and workers run in this process and die by abort (no flush, nothing given back). Jobs run
//! the synthetic model. Every test is bounded in time, and the chaos test's schedule comes
//! from a seeded generator.

use crate::common;

use std::time::{Duration, Instant};

use common::{assert_exactly_one_result_each, synthetic_job, synthetic_models, wait_done};
use idunno::embedded::{ClusterSpec, EmbeddedCluster};
use idunno::processes::{use_binary, CoordinatorGroup};
use idunno_api::cluster::ClusterStatus;
use idunno_api::job::{BatchInfo, BatchStateInfo, Job};
use idunno_api::Client;
use rand::{Rng, SeedableRng};

/// How long any of these jobs may take, failures included.
const JOB_LIMIT: Duration = Duration::from_secs(240);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Three coordinator processes (a short lease timeout, so crashes resolve quickly).
fn coordinators(dir: &std::path::Path) -> CoordinatorGroup {
    common::init_log();
    use_binary(env!("CARGO_BIN_EXE_idunno"));
    let flags: Vec<String> = ["--lease-timeout-ms", "2000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    CoordinatorGroup::start_with(3, Some(dir), &flags).unwrap()
}

/// Storage nodes and one-thread workers in this process, for the coordinator processes.
async fn satellites(
    dir: &std::path::Path,
    group: &CoordinatorGroup,
    storage_nodes: usize,
    workers: usize,
) -> EmbeddedCluster {
    group
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    let spec = ClusterSpec {
        coordinators: 0,
        storage_nodes,
        workers: 0,
        listen: None,
    };
    let mut cluster = EmbeddedCluster::attach(dir, &group.addrs(), &spec)
        .await
        .unwrap();
    for _ in 0..workers {
        add_worker(&mut cluster).await;
    }
    cluster
}

async fn add_worker(cluster: &mut EmbeddedCluster) -> usize {
    cluster
        .add_worker(|w| {
            w.threads = Some(1);
            w.batch_wait_ms = 5_000;
        })
        .await
        .unwrap()
}

/// The leader's index in `group.nodes`, as the running nodes say.
async fn leader_index(group: &CoordinatorGroup) -> usize {
    let status: ClusterStatus = group
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    group
        .nodes
        .iter()
        .position(|n| n.id == status.node_id)
        .unwrap()
}

/// No coordinator log shows a panic.
fn assert_no_panic(group: &CoordinatorGroup) {
    for node in &group.nodes {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "coordinator {} panicked:\n{log}",
            node.id
        );
    }
}

async fn batches(client: &Client, job: u64) -> Vec<BatchInfo> {
    client
        .get(&format!("/v1/jobs/{job}/batches"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_workers_run_a_job_loses_nothing() {
    let _cpu = common::cpu_shared().await;
    let dir = tempfile::tempdir().unwrap();
    let mut group = coordinators(dir.path());
    let cluster = satellites(dir.path(), &group, 2, 2).await;
    let client = cluster.client().with_deadline(Duration::from_secs(60));
    synthetic_models(&client, &group.addrs()[0], &[("syn", 40)]).await;
    let job = synthetic_job(&client, "syn", 160, 4, 1).await;
    // A third of it done, then the leader dies.
    let started = Instant::now();
    loop {
        let j: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
        if j.done >= 50 {
            break;
        }
        assert!(started.elapsed() < JOB_LIMIT, "no progress: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = leader_index(&group).await;
    let killed_at = now_ms();
    group.nodes[victim].kill();
    let done = wait_done(&client, job.id, JOB_LIMIT).await;
    assert_exactly_one_result_each(&client, job.id, 160).await;
    assert!(done.finished_at_ms > Some(killed_at));
    // Work went on after the kill: batches leased by the new leader completed.
    let after: Vec<u64> = batches(&client, job.id)
        .await
        .iter()
        .filter_map(|b| match b.state {
            BatchStateInfo::Done {
                leased_at_ms,
                completed_at_ms,
                ..
            } if leased_at_ms > killed_at => Some(completed_at_ms - killed_at),
            _ => None,
        })
        .collect();
    assert!(!after.is_empty(), "nothing leased after the kill");
    eprintln!(
        "first batch leased after the kill completed {} ms after it",
        after.iter().min().unwrap()
    );
    group.nodes[victim].start().unwrap();
    assert_no_panic(&group);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_leader_and_worker_kills_through_a_whole_job() {
    let _cpu = common::cpu_shared().await;
    let dir = tempfile::tempdir().unwrap();
    let mut group = coordinators(dir.path());
    let mut cluster = satellites(dir.path(), &group, 4, 3).await;
    let client = cluster.client().with_deadline(Duration::from_secs(60));
    synthetic_models(&client, &group.addrs()[0], &[("syn", 15)]).await;
    let queries = 600;
    let job = synthetic_job(&client, "syn", queries, 4, 1).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261202);
    let started = Instant::now();
    let mut next_leader_kill = Instant::now() + Duration::from_millis(2000);
    let mut next_worker_kill = Instant::now() + Duration::from_millis(3000);
    let mut workers: Vec<usize> = (0..3).collect();
    let (mut leader_kills, mut worker_kills) = (0, 0);
    loop {
        let j: Option<Job> = client.get(&format!("/v1/jobs/{}", job.id)).await.ok();
        if j.as_ref().is_some_and(|j| j.done >= queries as u64) {
            break;
        }
        assert!(
            started.elapsed() < JOB_LIMIT,
            "job not done under chaos: {j:?}"
        );
        let now = Instant::now();
        if now >= next_leader_kill {
            // SIGKILL the leader and restart it at once, on the same data.
            if let Ok(status) = group.wait_for_leader(Duration::from_secs(10)).await {
                if let Some(node) = group.nodes.iter_mut().find(|n| n.id == status.node_id) {
                    node.kill();
                    node.start().unwrap();
                    leader_kills += 1;
                }
            }
            next_leader_kill = now + Duration::from_millis(rng.random_range(1500..2500));
        }
        if now >= next_worker_kill {
            // Abort a worker (a crash), and start a fresh one in its place.
            let at = rng.random_range(0..workers.len());
            cluster.kill_worker(workers.remove(at)).await;
            workers.push(add_worker(&mut cluster).await);
            worker_kills += 1;
            next_worker_kill = now + Duration::from_millis(rng.random_range(2500..3500));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{leader_kills} leader kills, {worker_kills} worker kills");
    assert!(
        leader_kills >= 2 && worker_kills >= 1,
        "too little chaos to mean anything"
    );
    wait_done(&client, job.id, JOB_LIMIT).await;
    assert_exactly_one_result_each(&client, job.id, queries as u64).await;
    assert_no_panic(&group);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_killed_and_restarted_keeps_jobs_files_and_results() {
    let _cpu = common::cpu_shared().await;
    let dir = tempfile::tempdir().unwrap();
    let mut group = coordinators(dir.path());
    let mut cluster = satellites(dir.path(), &group, 2, 2).await;
    let client = cluster.client().with_deadline(Duration::from_secs(60));
    synthetic_models(&client, &group.addrs()[0], &[("syn", 20)]).await;
    let finished = synthetic_job(&client, "syn", 40, 4, 1).await;
    wait_done(&client, finished.id, JOB_LIMIT).await;
    let results_before: serde_json::Value = client
        .get(&format!("/v1/jobs/{}/results", finished.id))
        .await
        .unwrap();
    let running = synthetic_job(&client, "syn", 200, 4, 1).await;
    loop {
        let j: Job = client
            .get(&format!("/v1/jobs/{}", running.id))
            .await
            .unwrap();
        if j.done >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Everything dies at once: workers and storage nodes abort, coordinators get SIGKILL.
    for i in 0..2 {
        cluster.kill_worker(i).await;
    }
    cluster.kill_nodes(&[0, 1]).await.unwrap();
    for node in &mut group.nodes {
        node.kill();
    }
    // And comes back on the same data folders and addresses.
    for node in &mut group.nodes {
        node.start().unwrap();
    }
    group
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap();
    for i in 0..2 {
        cluster.restart_node(i).await.unwrap();
    }
    cluster.wait_for_nodes(2).await.unwrap();
    for _ in 0..2 {
        add_worker(&mut cluster).await;
    }
    let results_after: serde_json::Value = client
        .get(&format!("/v1/jobs/{}/results", finished.id))
        .await
        .unwrap();
    assert_eq!(results_before, results_after, "results survive intact");
    let (code, body) = common::http(
        reqwest::Method::GET,
        &format!("http://{}/v1/files/in/tiny.png", group.addrs()[0]),
        &[],
        None,
    )
    .await;
    assert_eq!(code, reqwest::StatusCode::OK);
    assert_eq!(body, common::tiny_png(7), "files survive intact");
    // The running job resumes and finishes, each query once.
    wait_done(&client, running.id, JOB_LIMIT).await;
    assert_exactly_one_result_each(&client, running.id, 200).await;
    assert_no_panic(&group);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_commits_nothing_and_catches_up() {
    let _cpu = common::cpu_shared().await;
    common::init_log();
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        coordinators: 3,
        storage_nodes: 1,
        workers: 0,
        listen: None,
    };
    let mut cluster = EmbeddedCluster::start(dir.path(), &spec, |c| c.lease_timeout_ms = 2000)
        .await
        .unwrap();
    for _ in 0..2 {
        add_worker(&mut cluster).await;
    }
    let client = cluster.client().with_deadline(Duration::from_secs(60));
    synthetic_models(&client, &cluster.coordinator_addrs()[0], &[("syn", 30)]).await;
    let job = synthetic_job(&client, "syn", 200, 4, 1).await;
    let old = cluster
        .coordinators
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let old_node = cluster.coordinators.node(old).unwrap().coordinator.clone();
    // Cut the leader off from the other two (its switch refuses both ways).
    old_node.links.cut(others.clone());
    let status = |addr: String| async move {
        let (_, body) = common::http(
            reqwest::Method::GET,
            &format!("http://{addr}/v1/cluster"),
            &[],
            None,
        )
        .await;
        serde_json::from_value::<ClusterStatus>(common::json(&body)).unwrap()
    };
    let old_addr = cluster.coordinators.addr(old);
    common::eventually("the cut-off leader to step down", || {
        let s = status(old_addr.clone());
        async move { (s.await.role == "isolated").then_some(()) }
    })
    .await;
    // From here on it commits nothing. (An append the followers had acknowledged before the
    // cut, its answer still on the way, may commit just after it: that entry is on the
    // majority already, and an isolated node has waited out an election timeout, so no
    // answer is still on the way.)
    let cut_commit = old_node.log.committed_index();
    // A write through it fails, and it commits nothing.
    let (code, body) = common::http(
        reqwest::Method::POST,
        &format!("http://{old_addr}/v1/jobs/{}/stop", job.id),
        &[],
        None,
    )
    .await;
    assert_eq!(
        code,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // The majority elects a leader of its own and the job goes on.
    let majority = Client::new(
        &others
            .iter()
            .map(|id| cluster.coordinators.addr(*id))
            .collect::<Vec<_>>(),
        None,
    )
    .unwrap()
    .with_deadline(Duration::from_secs(60));
    let before: Job = majority.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    let progressed = common::eventually("progress without the old leader", || {
        let majority = majority.clone();
        async move {
            let j: Job = majority.get(&format!("/v1/jobs/{}", job.id)).await.ok()?;
            (j.done > before.done).then_some(j)
        }
    })
    .await;
    let new_leader = status(cluster.coordinators.addr(others[0])).await.leader_id;
    assert!(new_leader.is_some_and(|l| l != old), "{new_leader:?}");
    assert_eq!(
        old_node.log.committed_index(),
        cut_commit,
        "the cut-off node committed nothing"
    );
    // What it had committed, the majority's new leader has committed too.
    let leader_commit = new_leader
        .and_then(|l| cluster.coordinators.node(l))
        .and_then(|n| n.coordinator.log.committed_index());
    assert!(
        leader_commit >= cut_commit,
        "the cut-off node committed {cut_commit:?}, the new leader {leader_commit:?}"
    );
    assert!(progressed.done > before.done);
    // Healed, the old leader follows and catches up.
    old_node.links.heal();
    wait_done(&majority, job.id, JOB_LIMIT).await;
    common::eventually("the old leader to catch up", || {
        let s = status(old_addr.clone());
        let target = majority.clone();
        async move {
            let leader_commit = target
                .get::<ClusterStatus>("/v1/cluster")
                .await
                .ok()?
                .commit_index;
            let s = s.await;
            (s.role == "follower" && s.applied_index >= leader_commit).then_some(())
        }
    })
    .await;
    let (code, body) = common::http(
        reqwest::Method::GET,
        &format!("http://{old_addr}/v1/jobs/{}?stale=true", job.id),
        &[],
        None,
    )
    .await;
    assert_eq!(code, reqwest::StatusCode::OK);
    assert_eq!(common::json(&body)["state"], "done");
    assert_exactly_one_result_each(&client, job.id, 200).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_node_lost_during_a_job_loses_nothing() {
    let _cpu = common::cpu_shared().await;
    common::init_log();
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        coordinators: 1,
        storage_nodes: 4,
        workers: 0,
        listen: None,
    };
    let mut cluster = EmbeddedCluster::start(dir.path(), &spec, |_| {})
        .await
        .unwrap();
    for _ in 0..2 {
        add_worker(&mut cluster).await;
    }
    let client = cluster.client().with_deadline(Duration::from_secs(60));
    synthetic_models(&client, &cluster.coordinator_addrs()[0], &[("syn", 30)]).await;
    let job = synthetic_job(&client, "syn", 160, 4, 1).await;
    loop {
        let j: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
        if j.done >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A node holding the input dies (a crash): inputs come from other replicas, results go
    // to the live nodes.
    let replicas: idunno_api::file::ReplicaSet =
        client.get("/v1/files/in/tiny.png/replicas").await.unwrap();
    let victim_id = replicas.replicas[0].node.clone();
    let victim = (0..4).find(|i| cluster.node_id(*i) == victim_id).unwrap();
    cluster.kill_nodes(&[victim]).await.unwrap();
    wait_done(&client, job.id, JOB_LIMIT).await;
    assert_exactly_one_result_each(&client, job.id, 160).await;
    cluster.shutdown().await;
}
