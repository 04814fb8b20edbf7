//! Fair-time scheduling and the job statistics, end to end: coordinators, a storage node and
//! workers in one process, each a real HTTP server; jobs run the synthetic model, whose CPU
//! cost per query is declared, so rates and shares can be checked against what fair-time
//! promises. Rates are counted from the replicated batch records over 10 s windows.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, http, json};
use idunno::embedded::{ClusterSpec, EmbeddedCluster};
use idunno_api::job::{BatchInfo, BatchStateInfo, Job, JobState, JobStats};
use idunno_api::result::QueryResult;
use idunno_api::Client;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// One rate window, as the issue and the original reports count them.
const WINDOW_MS: u64 = 10_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A cluster of `coordinators`, one storage node, and `workers` one-thread workers; the
/// returned guard keeps the test binary's other tests off the cores while rates are measured.
async fn cluster(
    coordinators: u64,
    workers: usize,
) -> (
    EmbeddedCluster,
    (
        tempfile::TempDir,
        tokio::sync::RwLockWriteGuard<'static, ()>,
    ),
) {
    common::init_log();
    let cpu = common::cpu_alone().await;
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        coordinators,
        storage_nodes: 1,
        workers: 0,
        listen: None,
    };
    let mut cluster = EmbeddedCluster::start(dir.path(), &spec, |_| {})
        .await
        .unwrap();
    for _ in 0..workers {
        cluster
            .add_worker(|w| {
                w.threads = Some(1);
                w.batch_wait_ms = 5_000;
            })
            .await
            .unwrap();
    }
    (cluster, (dir, cpu))
}

/// Registers synthetic models of the given costs (name → ms per query) and their input.
async fn setup(cluster: &EmbeddedCluster, models: &[(&str, u32)]) -> Client {
    let client = cluster.client();
    common::synthetic_models(&client, &cluster.coordinator_addrs()[0], models).await;
    client
}

async fn add_job(client: &Client, model: &str, queries: usize, batch: u32, weight: u32) -> Job {
    common::synthetic_job(client, model, queries, batch, weight).await
}

async fn batches(client: &Client, job: u64) -> Vec<BatchInfo> {
    client
        .get(&format!("/v1/jobs/{job}/batches"))
        .await
        .unwrap()
}

/// Queries completed and worker milliseconds spent on a job in `(start, end]`.
async fn window(client: &Client, job: u64, start: u64, end: u64) -> (u64, u64) {
    let mut queries = 0;
    let mut busy = 0;
    for b in batches(client, job).await {
        if let BatchStateInfo::Done {
            completed_at_ms,
            compute_ms,
            ..
        } = b.state
        {
            if completed_at_ms > start && completed_at_ms <= end {
                queries += u64::from(b.len);
                busy += compute_ms;
            }
        }
    }
    (queries, busy)
}

/// Waits `settle`, then one window; returns each job's (queries, busy ms) in it.
async fn measure(client: &Client, jobs: &[u64], settle: Duration) -> Vec<(u64, u64)> {
    tokio::time::sleep(settle).await;
    let start = now_ms();
    tokio::time::sleep(Duration::from_millis(WINDOW_MS)).await;
    let end = start + WINDOW_MS;
    let mut out = Vec::new();
    for job in jobs {
        out.push(window(client, *job, start, end).await);
    }
    out
}

fn gap(a: u64, b: u64) -> f64 {
    a.max(b) as f64 / a.min(b).max(1) as f64 - 1.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_4_to_1_cost_run_at_equal_rates_and_a_third_of_weight_2_gets_twice() {
    let (cluster, _dir) = cluster(1, 4).await;
    let client = setup(&cluster, &[("heavy", 16), ("light", 4), ("mid", 8)]).await;
    let heavy = add_job(&client, "heavy", 20_000, 8, 1).await;
    let light = add_job(&client, "light", 20_000, 8, 1).await;

    let two = measure(&client, &[heavy.id, light.id], Duration::from_secs(4)).await;
    let (h, l) = (two[0], two[1]);
    assert!(h.0 > 100 && l.0 > 100, "too little work done: {two:?}");
    assert!(gap(h.0, l.0) <= 0.10, "rates differ: {two:?}");
    let time_ratio = h.1 as f64 / l.1.max(1) as f64;
    assert!(
        (3.0..=5.3).contains(&time_ratio),
        "worker time should be near 4:1, is {time_ratio:.2}: {two:?}"
    );

    // A third job, of weight 2, joins: all three converge, it at twice the rate.
    let mid = add_job(&client, "mid", 20_000, 8, 2).await;
    let three = measure(
        &client,
        &[heavy.id, light.id, mid.id],
        Duration::from_secs(4),
    )
    .await;
    let (h, l, m) = (three[0], three[1], three[2]);
    assert!(gap(h.0, l.0) <= 0.10, "rates differ: {three:?}");
    let ratio = m.0 as f64 / ((h.0 + l.0) as f64 / 2.0);
    assert!(
        (1.8..=2.2).contains(&ratio),
        "weight 2 should get twice the rate, got {ratio:.2}: {three:?}"
    );

    // The statistics say the same: shares near the fair shares, rates over the last 10 s.
    let stats: JobStats = client
        .get(&format!("/v1/jobs/{}/stats", heavy.id))
        .await
        .unwrap();
    assert!((stats.fair_share - 0.5).abs() < 0.1, "{stats:?}");
    assert!((stats.share - stats.fair_share).abs() < 0.1, "{stats:?}");
    assert!(stats.rate_qps > 0.0 && stats.eta_s.is_some());
    for job in [heavy.id, light.id, mid.id] {
        client.delete(&format!("/v1/jobs/{job}")).await.unwrap();
    }
    cluster.shutdown().await;
}

/// The numbers that must not depend on which coordinator answers (all of them, for a done job).
fn assert_same_stats(a: &JobStats, b: &JobStats, what: &str) {
    assert_eq!(a, b, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_are_the_same_from_every_coordinator_and_after_a_leader_change() {
    let (mut cluster, _dir) = cluster(3, 2).await;
    let client = setup(&cluster, &[("syn", 5)]).await;
    let job = add_job(&client, "syn", 120, 4, 1).await;
    eventually("the job done", || async {
        let j: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.ok()?;
        (j.state == JobState::Done).then_some(())
    })
    .await;
    let addrs = cluster.coordinator_addrs();
    let path = format!("/v1/jobs/{}/stats", job.id);
    let read = |addr: String| {
        let path = path.clone();
        async move {
            let (code, body) = http(Method::GET, &format!("http://{addr}{path}"), &[], None).await;
            assert_eq!(code, StatusCode::OK);
            serde_json::from_value::<JobStats>(json(&body)).unwrap()
        }
    };
    let first = read(addrs[0].clone()).await;
    for addr in &addrs[1..] {
        assert_same_stats(&first, &read(addr.clone()).await, addr);
    }
    // C2: every query measured, percentiles in order.
    assert_eq!(
        (first.done, first.latency_ms.count, first.compute_ms.count),
        (120, 120, 120)
    );
    for d in [&first.latency_ms, &first.compute_ms] {
        assert!(
            d.mean > 0.0 && d.p50 <= d.p90 && d.p90 <= d.p95 && d.p95 <= d.p99,
            "{d:?}"
        );
    }
    assert!(
        first.compute_ms.p50 >= 4.0,
        "5 ms of CPU per query: {:?}",
        first.compute_ms
    );
    assert!(first.latency_ms.mean >= first.compute_ms.mean);
    // C1 on the job itself too, from a follower.
    let leader = cluster
        .coordinators
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let follower = addrs[if leader == 1 { 1 } else { 0 }].clone();
    let (_, body) = http(
        Method::GET,
        &format!("http://{follower}/v1/jobs/{}", job.id),
        &[],
        None,
    )
    .await;
    let seen: Job = serde_json::from_value(json(&body)).unwrap();
    assert!(seen.rate_qps > 0.0);
    assert_eq!(seen.rate_qps, first.rate_qps);
    // C5 agrees with the batch records: who completed how many queries.
    let mut done_by: BTreeMap<String, u64> = BTreeMap::new();
    for b in batches(&client, job.id).await {
        if let BatchStateInfo::Done { worker, .. } = b.state {
            *done_by.entry(worker).or_default() += u64::from(b.len);
        }
    }
    let c5: BTreeMap<String, u64> = first
        .workers
        .iter()
        .map(|w| (w.id.clone(), w.queries_done))
        .collect();
    assert_eq!(c5, done_by);
    assert!(first
        .workers
        .iter()
        .all(|w| !w.current && !w.name.is_empty()));

    // A new leader answers the same.
    cluster.coordinators.stop(leader).await;
    let new_leader = cluster
        .coordinators
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    assert_ne!(new_leader, leader);
    for id in cluster.coordinators.running() {
        let after = read(cluster.coordinators.addr(id)).await;
        assert_same_stats(&first, &after, "after the leader change");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c5_names_the_workers_holding_the_job_s_leases() {
    let (cluster, _dir) = cluster(1, 2).await;
    let client = setup(&cluster, &[("syn", 40)]).await;
    let job = add_job(&client, "syn", 2_000, 4, 1).await;
    let leased_by = |batches: Vec<BatchInfo>| {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for b in batches {
            if let BatchStateInfo::Leased { worker, .. } = b.state {
                *by.entry(worker).or_default() += 1;
            }
        }
        by
    };
    // Two reads are not one snapshot: look until the leases held still between them.
    let (c5, leases) = eventually("a steady view of the leases", || async {
        let before = leased_by(batches(&client, job.id).await);
        let stats: JobStats = client
            .get(&format!("/v1/jobs/{}/stats", job.id))
            .await
            .ok()?;
        let after = leased_by(batches(&client, job.id).await);
        (before == after && after.len() == 2).then_some((stats, after))
    })
    .await;
    let current: BTreeMap<String, u64> = c5
        .workers
        .iter()
        .filter(|w| w.current)
        .map(|w| (w.id.clone(), w.batches_in_flight))
        .collect();
    assert_eq!(current, leases);
    let names: Vec<&str> = c5.workers.iter().map(|w| w.name.as_str()).collect();
    assert!(
        names.contains(&"worker-1") && names.contains(&"worker-2"),
        "{names:?}"
    );
    client
        .delete(&format!("/v1/jobs/{}", job.id))
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_gives_back_unstarted_batches_and_start_resumes() {
    let (cluster, _dir) = cluster(1, 2).await;
    // 4 queries × 250 ms of CPU: a batch takes a second on a one-thread worker.
    let client = setup(&cluster, &[("slow", 250)]).await;
    let job = add_job(&client, "slow", 40, 4, 1).await;
    eventually("two batches done", || async {
        let j: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.ok()?;
        (j.batches_done >= 2).then_some(())
    })
    .await;
    let before_stop = now_ms();
    let stopped: Job = client
        .post(&format!("/v1/jobs/{}/stop", job.id), &())
        .await
        .unwrap();
    let after_stop = now_ms();
    assert_eq!(stopped.state, JobState::Stopped);
    let quiet: Job = eventually("nothing in flight", || async {
        let j: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.ok()?;
        (j.in_flight == 0).then_some(j)
    })
    .await;
    let records = batches(&client, job.id).await;
    let mut finished_after_stop = 0;
    for b in &records {
        match &b.state {
            BatchStateInfo::Leased { .. } => panic!("{} still leased: {b:?}", b.id),
            BatchStateInfo::Done {
                leased_at_ms,
                completed_at_ms,
                compute_ms,
                ..
            } if *completed_at_ms > before_stop => {
                finished_after_stop += 1;
                assert!(*leased_at_ms <= after_stop, "leased after the stop: {b:?}");
                // It was being computed when the stop came (started no later than the stop,
                // give or take the time its completion took to report), not started after.
                let started = completed_at_ms.saturating_sub(*compute_ms);
                assert!(
                    started <= after_stop + 300,
                    "a batch started after the stop: {b:?} (stop at {after_stop})"
                );
            }
            _ => {}
        }
    }
    assert!(
        finished_after_stop <= 2,
        "one batch per worker at most finishes: {records:?}"
    );
    // The workers' prepared batches went back to the queue.
    assert!(quiet.retries >= 1, "{quiet:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    assert_eq!(still.done, quiet.done, "a stopped job does not advance");

    let _: Job = client
        .post(&format!("/v1/jobs/{}/start", job.id), &())
        .await
        .unwrap();
    let done: Job = eventually("the job done", || async {
        let j: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.ok()?;
        (j.state == JobState::Done).then_some(j)
    })
    .await;
    assert!(done.resumed_at_ms >= Some(after_stop));
    let results: Vec<QueryResult> = client
        .get(&format!("/v1/jobs/{}/results", job.id))
        .await
        .unwrap();
    let indexes: Vec<u64> = results.iter().map(|r| r.index).collect();
    assert_eq!(indexes, (0..40).collect::<Vec<u64>>());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_size_change_shows_in_the_next_lease() {
    let (cluster, _dir) = cluster(1, 2).await;
    let client = setup(&cluster, &[("syn", 50)]).await;
    let job = add_job(&client, "syn", 96, 8, 1).await;
    // Both workers started their first batches together (400 ms each): once both are done,
    // each has started the batch it held prepared and leased the next. The change then lands
    // mid-batch, not at a boundary where a worker could start its prepared batch just before
    // the revocation reaches it (which would rightly finish at the old size).
    eventually("two batches done", || async {
        let j: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.ok()?;
        (j.batches_done >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let changed: Job = client
        .patch(&format!("/v1/jobs/{}", job.id), &json!({"batch_size": 2}))
        .await
        .unwrap();
    let after_change = now_ms();
    assert_eq!(changed.batch_size, 2);
    eventually("the job done", || async {
        let j: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.ok()?;
        (j.state == JobState::Done).then_some(())
    })
    .await;
    let records = batches(&client, job.id).await;
    let mut big_after = 0;
    for b in &records {
        let BatchStateInfo::Done {
            leased_at_ms,
            completed_at_ms,
            ..
        } = b.state
        else {
            panic!("not done: {b:?}")
        };
        if leased_at_ms > after_change {
            assert!(b.len <= 2, "a lease after the change is cut at 2: {b:?}");
            assert_eq!(b.pass_size, 2, "{b:?}");
        } else if b.len == 8 {
            assert_eq!(b.pass_size, 8, "{b:?}");
        }
        if b.len == 8 && completed_at_ms > after_change {
            big_after += 1;
        }
    }
    // Only the batches being computed at the change finish at the old size; prepared ones
    // were given back and cut again.
    assert!(big_after <= 2, "{records:?}");
    assert!(
        records.iter().filter(|b| b.len == 2).count() >= 8,
        "{records:?}"
    );
    let results: Vec<QueryResult> = client
        .get(&format!("/v1/jobs/{}/results", job.id))
        .await
        .unwrap();
    let indexes: Vec<u64> = results.iter().map(|r| r.index).collect();
    assert_eq!(indexes, (0..96).collect::<Vec<u64>>());
    cluster.shutdown().await;
}
