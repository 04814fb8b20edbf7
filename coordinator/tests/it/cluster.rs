//! Coordinator groups started in-process on loopback port 0 with real sled folders: elections,
//! forwarding, failover, catch-up by snapshot, request-id deduplication, lease expiry, bad input.

use std::time::{Duration, Instant};

use idunno_api::cluster::{ClusterStatus, NewMember};
use idunno_api::job::{Inputs, Job, NewJob};
use idunno_api::model::NewModel;
use idunno_api::worker::{
    Completion, CompletionAck, Lease, LeaseAnswer, LeaseRequest, WorkerRegistered,
    WorkerRegistration,
};
use idunno_api::{Client, ErrorBody};
use idunno_coordinator::local::LocalGroup;
use idunno_coordinator::CoordinatorConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

async fn group(n: u64, tweak: impl Fn(&mut CoordinatorConfig)) -> (LocalGroup, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let group = LocalGroup::start(n, dir.path(), tweak).await.unwrap();
    group.wait_for_leader(WAIT).await.expect("a leader");
    (group, dir)
}

fn client(addrs: &[String]) -> Client {
    Client::new(addrs, None).unwrap()
}

async fn add_model(c: &Client) {
    let m = NewModel {
        name: "r18".into(),
        arch: idunno_api::arch::Arch::ResNet18,
        weights: "models/r18.safetensors".into(),
        input_size: None,
        cost_ms: None,
        online: Default::default(),
    };
    let _: Value = c.post("/v1/models", &m).await.unwrap();
}

fn new_job(name: &str, inputs: usize, batch_size: u32) -> NewJob {
    NewJob {
        name: Some(name.into()),
        model: "r18".into(),
        inputs: Inputs::List((0..inputs).map(|i| format!("images/{i}.png")).collect()),
        batch_size,
        weight: 1,
        start: true,
    }
}

async fn status(addr: &str) -> ClusterStatus {
    client(&[addr.to_string()])
        .get("/v1/cluster")
        .await
        .unwrap()
}

fn follower(group: &LocalGroup, leader: u64) -> u64 {
    group
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap()
}

/// A request body: content type and bytes.
type Body = Option<(&'static str, Vec<u8>)>;

/// A raw request: status and parsed JSON body (Null if empty).
async fn raw(
    method: reqwest::Method,
    url: String,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some((content_type, bytes)) = body {
        req = req.header("content-type", content_type).body(bytes);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_elects_one_leader_that_every_node_knows() {
    let (group, _dir) = group(3, |_| {}).await;
    let mut leaders = Vec::new();
    let mut roles = Vec::new();
    for addr in group.addrs() {
        let s = status(&addr).await;
        leaders.push(s.leader_id);
        roles.push(s.role.clone());
        assert_eq!(s.members.len(), 3);
        assert!(s.members.iter().all(|m| m.voter));
    }
    // Replication progress is the leader's view; followers ask the leader for it. (Right after
    // an election the leader may not have heard back from everyone yet.)
    for addr in group.addrs() {
        let started = Instant::now();
        loop {
            let s = status(&addr).await;
            let known =
                |m: &idunno_api::cluster::Member| m.matched_index.is_some() && m.lag.is_some();
            if s.members.iter().all(known) {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "{addr} ({}): {:?}",
                s.role,
                s.members
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        leaders.iter().all(|l| l.is_some() && *l == leaders[0]),
        "{leaders:?}"
    );
    assert_eq!(
        roles.iter().filter(|r| *r == "leader").count(),
        1,
        "{roles:?}"
    );
    let (code, ready) = raw(
        reqwest::Method::GET,
        format!("http://{}/readyz", group.addrs()[1]),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ready["leader"], json!(leaders[0]));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_to_a_follower_commits_and_reads_are_linearizable_everywhere() {
    let (group, _dir) = group(3, |_| {}).await;
    let leader = group.wait_for_leader(WAIT).await.unwrap();
    let f = follower(&group, leader);
    let via_follower = client(&[group.addr(f)]);
    add_model(&via_follower).await;
    let job: Job = via_follower
        .post("/v1/jobs", &new_job("j", 10, 3))
        .await
        .unwrap();
    assert_eq!(job.queries, 10);
    // Every node, leader or not, sees the job at once (reads are linearizable by default).
    for addr in group.addrs() {
        let seen: Job = client(&[addr])
            .get(&format!("/v1/jobs/{}", job.id))
            .await
            .unwrap();
        assert_eq!(seen.name, "j");
    }
    let forwarded = group.node(f).unwrap().coordinator.metrics.forwarded.get();
    assert!(
        forwarded >= 2,
        "the follower forwarded its writes ({forwarded})"
    );
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_stops_a_new_one_takes_over_with_every_committed_job() {
    let (mut group, _dir) = group(3, |_| {}).await;
    let all = client(&group.addrs());
    add_model(&all).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let job: Job = all
            .post("/v1/jobs", &new_job(&format!("j{i}"), 4, 2))
            .await
            .unwrap();
        ids.push(job.id);
    }
    let old = group.wait_for_leader(WAIT).await.unwrap();
    group.stop(old).await;
    let new = group.wait_for_leader(WAIT).await.expect("a new leader");
    assert_ne!(new, old);
    let jobs: Vec<Job> = all.get("/v1/jobs").await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    // The new leader takes writes.
    let job: Job = all.post("/v1/jobs", &new_job("after", 1, 1)).await.unwrap();
    assert!(job.id > *ids.last().unwrap());
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_purged_log_catches_up_through_a_snapshot() {
    let (mut group, _dir) = group(3, |c| {
        c.snapshot_every = 20;
        c.keep_logs = 5;
    })
    .await;
    let leader = group.wait_for_leader(WAIT).await.unwrap();
    let lagging = follower(&group, leader);
    let lagging_last = status(&group.addr(lagging))
        .await
        .last_log_index
        .unwrap_or(0);
    group.stop(lagging).await;
    let others: Vec<String> = group.running().iter().map(|id| group.addr(*id)).collect();
    let c = client(&others);
    add_model(&c).await;
    for i in 0..80 {
        let _: Job = c
            .post("/v1/jobs", &new_job(&format!("j{i}"), 1, 1))
            .await
            .unwrap();
    }
    // The leader has snapshotted and purged the log the stopped node would need.
    let started = Instant::now();
    loop {
        let s = status(&group.addr(leader)).await;
        if s.purged_index.unwrap_or(0) > lagging_last + 10 {
            break;
        }
        assert!(started.elapsed() < WAIT, "the leader never purged: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    group.restart(lagging).await.unwrap();
    let target = status(&group.addr(leader)).await.applied_index.unwrap();
    let started = Instant::now();
    loop {
        let s = status(&group.addr(lagging)).await;
        if s.applied_index.unwrap_or(0) >= target {
            assert!(
                s.snapshot_index.is_some(),
                "caught up without a snapshot: {s:?}"
            );
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the restarted node never caught up: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let local: Vec<Job> = client(&[group.addr(lagging)])
        .get("/v1/jobs?stale=true")
        .await
        .unwrap();
    assert_eq!(local.len(), 80);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_group_restarted_from_disk_keeps_its_state() {
    let (mut group, _dir) = group(3, |_| {}).await;
    let all = client(&group.addrs());
    add_model(&all).await;
    let job: Job = all
        .post("/v1/jobs", &new_job("durable", 7, 2))
        .await
        .unwrap();
    for id in 1..=3 {
        group.stop(id).await;
    }
    for id in 1..=3 {
        group.restart(id).await.unwrap();
    }
    group
        .wait_for_leader(WAIT)
        .await
        .expect("a leader after a full restart");
    let back: Job = all.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    assert_eq!((back.name.as_str(), back.queries), ("durable", 7));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_is_applied_once_even_across_a_failover() {
    let (mut group, _dir) = group(3, |_| {}).await;
    add_model(&client(&group.addrs())).await;
    let leader = group.wait_for_leader(WAIT).await.unwrap();
    let body = serde_json::to_vec(&new_job("once", 3, 1)).unwrap();
    let send = |addr: String, body: Vec<u8>| async move {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/v1/jobs"))
            .header("content-type", "application/json")
            .header("idempotency-key", "retry-me-42")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json::<Job>().await.unwrap()
    };
    let first = send(group.addr(leader), body.clone()).await;
    let again = send(group.addr(leader), body.clone()).await;
    assert_eq!(first.id, again.id);
    // The answer was "lost" and the leader died: the retry goes to the next leader.
    group.stop(leader).await;
    group.wait_for_leader(WAIT).await.unwrap();
    let survivor = group.running()[0];
    let retried = send(group.addr(survivor), body).await;
    assert_eq!(retried.id, first.id);
    let jobs: Vec<Job> = client(&group.addrs()).get("/v1/jobs").await.unwrap();
    assert_eq!(jobs.len(), 1);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_json_error_and_changes_nothing() {
    let (group, _dir) = group(3, |c| c.body_limit = 64 * 1024).await;
    let leader = group.wait_for_leader(WAIT).await.unwrap();
    add_model(&client(&group.addrs())).await;
    use reqwest::Method as M;
    let json_body = |v: Value| Some(("application/json", serde_json::to_vec(&v).unwrap()));
    let job = |batch_size: u32, model: &str| {
        json_body(json!({"model": model, "inputs": ["a.png"], "batch_size": batch_size}))
    };
    let huge = json!({"model": "r18", "inputs": vec!["x".repeat(100); 1000], "batch_size": 1});
    let cases: Vec<(M, &str, Body, StatusCode)> = vec![
        (
            M::POST,
            "/v1/jobs",
            Some(("application/json", b"{not json".to_vec())),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/jobs",
            Some(("text/plain", b"{}".to_vec())),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (M::POST, "/v1/jobs", job(0, "r18"), StatusCode::BAD_REQUEST),
        (
            M::POST,
            "/v1/jobs",
            job(1, "no-such-model"),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/jobs",
            json_body(json!({"model": "r18", "inputs": [], "batch_size": 1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/jobs",
            json_body(json!({"model": "r18", "inputs": ["a"], "batch_size": 1, "bogus": 1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/jobs",
            json_body(huge),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (M::GET, "/v1/jobs/999", None, StatusCode::NOT_FOUND),
        (
            M::GET,
            "/v1/jobs/not-a-number",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            M::PATCH,
            "/v1/jobs/999",
            json_body(json!({"batch_size": 2})),
            StatusCode::NOT_FOUND,
        ),
        (M::POST, "/v1/jobs/999/start", None, StatusCode::NOT_FOUND),
        (M::DELETE, "/v1/jobs/999", None, StatusCode::NOT_FOUND),
        (
            M::POST,
            "/v1/models",
            json_body(json!({"name": "x", "arch": "vgg", "weights": "w"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/models",
            json_body(json!({"name": "../x", "arch": "resnet18", "weights": "w"})),
            StatusCode::BAD_REQUEST,
        ),
        (M::GET, "/v1/models/nope", None, StatusCode::NOT_FOUND),
        (
            M::POST,
            "/v1/batches/garbage/complete",
            json_body(json!({"lease_id": 1, "result": "r"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/batches/999-0/complete",
            json_body(json!({"lease_id": 1, "result": "r"})),
            StatusCode::NOT_FOUND,
        ),
        (
            M::POST,
            "/v1/batches/1-0/complete",
            json_body(json!({"lease_id": 1, "result": "r", "compute_ms": u64::MAX})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/batches/1-0/complete",
            json_body(json!({"lease_id": 1, "result": "r", "failed": 100_000})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/batches/1-0/complete",
            json_body(json!({"lease_id": 1, "result": "r", "compute_ms": -1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/workers/w1/release",
            json_body(json!({"lease_id": 1, "batch_id": "999-0"})),
            StatusCode::NOT_FOUND,
        ),
        (
            M::POST,
            "/v1/workers/w1/release",
            json_body(json!({"lease_id": 1, "batch_id": "garbage"})),
            StatusCode::BAD_REQUEST,
        ),
        (M::DELETE, "/v1/workers/nobody", None, StatusCode::NOT_FOUND),
        (
            M::POST,
            "/v1/workers/bad%20id/lease",
            json_body(json!({})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::GET,
            "/v1/jobs?stale=maybe",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (M::GET, "/v1/nothing-here", None, StatusCode::NOT_FOUND),
        (M::PUT, "/v1/jobs", None, StatusCode::METHOD_NOT_ALLOWED),
        (
            M::POST,
            "/v1/cluster/members",
            json_body(json!({"id": 0, "addr": "nowhere"})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    let f = follower(&group, leader);
    for node in [leader, f] {
        for (method, path, body, want) in &cases {
            let url = format!("http://{}{path}", group.addr(node));
            let (code, value) = raw(method.clone(), url, body.clone()).await;
            assert_eq!(code, *want, "{method} {path} on node {node}: {value}");
            let err: ErrorBody = serde_json::from_value(value.clone())
                .unwrap_or_else(|_| panic!("{method} {path}: not an error body: {value}"));
            assert!(!err.error.is_empty() && !err.code.is_empty());
        }
    }
    // An Idempotency-Key reused for a different request: 409 with a JSON error, not the first
    // request's answer (nor a 500 for an answer of the wrong kind).
    let keyed = |node: u64, path: &str, body: Value| {
        let url = format!("http://{}{path}", group.addr(node));
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("idempotency-key", "reused-key-7")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let model = json!({"name": "keyed", "arch": "resnet18", "weights": "w.safetensors"});
    let (code, _) = keyed(leader, "/v1/models", model.clone()).await;
    assert_eq!(code, StatusCode::CREATED);
    for node in [leader, f] {
        let (code, body) = keyed(
            node,
            "/v1/jobs",
            json!({"model": "keyed", "inputs": ["a.png"], "batch_size": 1}),
        )
        .await;
        assert_eq!(code, StatusCode::CONFLICT, "{body}");
        let err: ErrorBody = serde_json::from_value(body).unwrap();
        assert!(err.error.contains("reused-key-7"), "{}", err.error);
        let changed = json!({"name": "keyed", "arch": "resnet18", "weights": "other.safetensors"});
        let (code, body) = keyed(node, "/v1/models", changed).await;
        assert_eq!(code, StatusCode::CONFLICT, "{body}");
        // The true retry is still answered like the first time.
        let (code, body) = keyed(node, "/v1/models", model.clone()).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let jobs: Vec<Job> = client(&group.addrs()).get("/v1/jobs").await.unwrap();
    assert!(jobs.is_empty(), "bad requests created nothing");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_workers_lease_expires_and_a_late_completion_still_counts_once() {
    let (group, _dir) = group(3, |c| c.lease_timeout_ms = 600).await;
    let c = client(&group.addrs());
    add_model(&c).await;
    let register = || async {
        let r: WorkerRegistered = c
            .post("/v1/workers/register", &WorkerRegistration::default())
            .await
            .unwrap();
        r.worker_id
    };
    let lease = |worker: String, wait_ms: u64| {
        let c = c.clone();
        async move {
            let (code, body) = c
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/workers/{worker}/lease"),
                    Some(&LeaseRequest {
                        wait_ms,
                        ..Default::default()
                    }),
                    Some(Duration::from_millis(wait_ms)),
                )
                .await
                .unwrap();
            (code == StatusCode::OK).then(|| {
                serde_json::from_slice::<LeaseAnswer>(&body)
                    .unwrap()
                    .lease
                    .unwrap()
            })
        }
    };
    let (slow, fast) = (register().await, register().await);
    // Nothing to do yet: the long poll answers 204 after its wait.
    let t = Instant::now();
    assert!(lease(fast.clone(), 300).await.is_none());
    assert!(t.elapsed() >= Duration::from_millis(250));

    let job: Job = c.post("/v1/jobs", &new_job("j", 1, 1)).await.unwrap();
    let first = lease(slow.clone(), 1000).await.expect("a batch");
    // `slow` never heartbeats: after the lease timeout its batch goes to `fast`.
    let second = lease(fast.clone(), 5000).await.expect("the batch again");
    assert_eq!(second.batch_id, first.batch_id);
    assert_eq!(second.attempt, 2);
    let complete = |lease: &Lease| {
        let body = Completion {
            lease_id: lease.lease_id,
            results: None,
            result: Some(format!("results/{}", lease.batch_id)),
            failed: 0,
            compute_ms: 1,
        };
        let path = format!("/v1/batches/{}/complete", lease.batch_id);
        let c = c.clone();
        async move { c.post::<_, CompletionAck>(&path, &body).await.unwrap() }
    };
    assert!(
        complete(&first).await.accepted,
        "the slow worker's late result counts"
    );
    assert!(
        !complete(&second).await.accepted,
        "the second result is dropped"
    );
    // Giving back a lease of a done batch is refused; so is another worker's lease.
    let release = |worker: &str, lease: &Lease| {
        let url = format!("http://{}/v1/workers/{worker}/release", group.addrs()[0]);
        let body = json!({"lease_id": lease.lease_id, "batch_id": lease.batch_id});
        async move {
            let body = Some(("application/json", serde_json::to_vec(&body).unwrap()));
            raw(reqwest::Method::POST, url, body).await
        }
    };
    let (code, body) = release(&fast, &second).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let (code, body) = release(&fast, &first).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not worker"),
        "{body}"
    );
    // A known worker deregisters once; the second time it is unknown.
    let gone = |worker: &str| {
        let url = format!("http://{}/v1/workers/{worker}", group.addrs()[0]);
        async move { raw(reqwest::Method::DELETE, url, None).await.0 }
    };
    assert_eq!(gone(&fast).await, StatusCode::NO_CONTENT);
    assert_eq!(gone(&fast).await, StatusCode::NOT_FOUND);
    let done: Job = c.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    assert_eq!((done.done, done.batches_done, done.retries), (1, 1, 1));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_learns_a_workers_name_and_models_from_its_heartbeats() {
    let (mut group, _dir) = group(3, |_| {}).await;
    let c = client(&group.addrs());
    add_model(&c).await;
    let w: WorkerRegistered = c
        .post(
            "/v1/workers/register",
            &json!({"name": "gpu-less-1", "accepts": ["other"]}),
        )
        .await
        .unwrap();
    let old = group.wait_for_leader(WAIT).await.unwrap();
    group.stop(old).await;
    group.wait_for_leader(WAIT).await.expect("a new leader");
    // What a worker sends (idunno_worker's heartbeat loop): its registration's name and models.
    let beat = json!({"loaded": [], "capacity": 1, "name": "gpu-less-1", "accepts": ["other"]});
    beat_all(&group.addrs(), &w.worker_id, &beat).await;
    let workers: Vec<Value> = c.get("/v1/workers").await.unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0]["name"], "gpu-less-1");
    assert_eq!(workers[0]["accepts"], json!(["other"]));
    // So it is still not handed a job of a model it does not run.
    let _: Job = c.post("/v1/jobs", &new_job("j", 2, 1)).await.unwrap();
    let resp = c
        .http()
        .post(format!(
            "http://{}/v1/workers/{}/lease",
            group.addrs()[(group.running()[0] - 1) as usize],
            w.worker_id
        ))
        .json(&LeaseRequest {
            wait_ms: 300,
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeating_worker_keeps_its_lease() {
    // One pass per lease: the job's two inputs are two batches.
    let (group, _dir) = group(1, |c| {
        c.lease_timeout_ms = 400;
        c.lease_target_ms = 0;
    })
    .await;
    let c = client(&group.addrs());
    add_model(&c).await;
    let w: WorkerRegistered = c
        .post("/v1/workers/register", &WorkerRegistration::default())
        .await
        .unwrap();
    let job: Job = c.post("/v1/jobs", &new_job("j", 2, 1)).await.unwrap();
    let answer: LeaseAnswer = c
        .post(
            &format!("/v1/workers/{}/lease", w.worker_id),
            &LeaseRequest {
                wait_ms: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let lease = answer.lease.unwrap();
    for _ in 0..12 {
        let _: Value = c
            .post(
                &format!("/v1/workers/{}/heartbeat", w.worker_id),
                &json!({}),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let j: Job = c.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    assert_eq!(
        (j.in_flight, j.retries),
        (1, 0),
        "the lease survived 1.2 s of a 0.4 s timeout"
    );
    let ack: CompletionAck = c
        .post(
            &format!("/v1/batches/{}/complete", lease.batch_id),
            &Completion {
                lease_id: lease.lease_id,
                results: None,
                result: Some("r".into()),
                failed: 0,
                compute_ms: 1,
            },
        )
        .await
        .unwrap();
    assert!(ack.accepted);
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_workers_batches_go_back_to_the_queue_at_once() {
    // A lease timeout no test waits out: only the deregistration can requeue the batch.
    let (group, _dir) = group(1, |c| c.lease_timeout_ms = 600_000).await;
    let c = client(&group.addrs());
    add_model(&c).await;
    let register = || async {
        let r: WorkerRegistered = c
            .post("/v1/workers/register", &WorkerRegistration::default())
            .await
            .unwrap();
        r.worker_id
    };
    let (leaving, staying) = (register().await, register().await);
    let job: Job = c.post("/v1/jobs", &new_job("j", 1, 1)).await.unwrap();
    let held = lease_once(&c, &leaving, 1000).await.expect("a batch");
    assert!(
        lease_once(&c, &staying, 200).await.is_none(),
        "one batch only"
    );
    c.delete(&format!("/v1/workers/{leaving}")).await.unwrap();
    let again = lease_once(&c, &staying, 1000)
        .await
        .expect("the deregistered worker's batch is handed out again");
    assert_eq!(again.batch_id, held.batch_id);
    assert_ne!(again.lease_id, held.lease_id);
    let j: Job = c.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    assert_eq!((j.in_flight, j.retries), (1, 1));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_added_at_run_time_receives_the_state_and_votes() {
    let dir = tempfile::tempdir().unwrap();
    let (group, _d) = group(3, |_| {}).await;
    let c = client(&group.addrs());
    add_model(&c).await;
    let job: Job = c.post("/v1/jobs", &new_job("before", 2, 1)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut config = CoordinatorConfig::new(4, dir.path().join("c4"));
    config.join = true;
    let fourth = idunno_coordinator::start(config, listener).await.unwrap();
    let s: ClusterStatus = c
        .post(
            "/v1/cluster/members",
            &NewMember {
                id: 4,
                addr: addr.clone(),
                voter: true,
            },
        )
        .await
        .unwrap();
    assert!(s.members.iter().any(|m| m.id == 4 && m.voter));
    let seen: Job = client(&[addr])
        .get(&format!("/v1/jobs/{}", job.id))
        .await
        .unwrap();
    assert_eq!(seen.name, "before");
    fourth.shutdown().await;
    group.shutdown().await;
}

/// Input names of `len` characters, numbered so each is distinct.
fn long_inputs(count: usize, len: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("images/{i:08}-{}.png", "x".repeat(len.saturating_sub(20))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_several_mib_replicates_and_later_writes_still_commit() {
    const LIMIT: usize = 8 << 20;
    let (group, _dir) = group(3, |c| c.body_limit = LIMIT).await;
    let leader = group.wait_for_leader(WAIT).await.unwrap();
    let f = follower(&group, leader);
    let c = client(&group.addrs());
    add_model(&c).await;
    // 100 000 names of ~75 bytes: a ~7.5 MiB body, just under the 8 MiB client limit.
    let inputs = long_inputs(100_000, 72);
    let job = NewJob {
        inputs: Inputs::List(inputs.clone()),
        ..new_job("big", 0, 64)
    };
    let body = serde_json::to_vec(&job).unwrap();
    assert!(
        body.len() > LIMIT * 7 / 8 && body.len() < LIMIT,
        "{}",
        body.len()
    );
    let (code, created) = raw(
        reqwest::Method::POST,
        format!("http://{}/v1/jobs", group.addr(f)),
        Some(("application/json", body)),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let id = created["id"].as_u64().unwrap();
    // Once it has applied the entry, the follower serves the job from its own copy.
    let on_follower = client(&[group.addr(f)]);
    let started = Instant::now();
    let seen: Job = loop {
        match on_follower
            .get::<Job>(&format!("/v1/jobs/{id}?stale=true"))
            .await
        {
            Ok(j) => break j,
            Err(e) => assert!(started.elapsed() < WAIT, "never replicated: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((seen.name.as_str(), seen.queries), ("big", 100_000));
    let copy = group
        .node(f)
        .unwrap()
        .coordinator
        .shared
        .read()
        .state
        .inputs_of(id)
        .cloned()
        .unwrap();
    assert_eq!(*copy, inputs);
    // Writes after it commit, and every node sees them.
    let after: Job = c.post("/v1/jobs", &new_job("after", 2, 1)).await.unwrap();
    for addr in group.addrs() {
        let j: Job = client(&[addr])
            .get(&format!("/v1/jobs/{}", after.id))
            .await
            .unwrap();
        assert_eq!(j.name, "after");
    }
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_smaller_raft_body_limit_still_catches_up() {
    // Node 3 takes Raft bodies of at most 128 KiB; the others take the default.
    let (mut group, _dir) = group(3, |c| {
        if c.id == 3 {
            c.body_limit = 64 << 10;
            c.raft_body_limit = 128 << 10;
        }
    })
    .await;
    let small = 3;
    group.stop(small).await;
    group
        .wait_for_leader(WAIT)
        .await
        .expect("a leader of the other two");
    let others: Vec<String> = group.running().iter().map(|id| group.addr(*id)).collect();
    let c = client(&others);
    add_model(&c).await;
    // 30 entries of ~20 KiB: what the leader sends the returning node in one append is ~600 KiB.
    let mut ids = Vec::new();
    for i in 0..30 {
        let job = NewJob {
            inputs: Inputs::List(long_inputs(200, 100)),
            ..new_job(&format!("j{i}"), 0, 8)
        };
        let created: Job = c.post("/v1/jobs", &job).await.unwrap();
        ids.push(created.id);
    }
    group.restart(small).await.unwrap();
    let on_small = client(&[group.addr(small)]);
    let started = Instant::now();
    loop {
        let jobs: Vec<Job> = on_small.get("/v1/jobs?stale=true").await.unwrap();
        if jobs.len() == ids.len() {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "node {small} holds {} of {} jobs",
            jobs.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    group.shutdown().await;
}

/// Sends one heartbeat to every coordinator at once, each bounded by 300 ms, as a worker's
/// heartbeat loop does (a dead coordinator holds up no other).
async fn beat_all(addrs: &[String], worker: &str, beat: &Value) {
    let http = reqwest::Client::new();
    let send = |addr: &String| {
        http.post(format!("http://{addr}/v1/workers/{worker}/heartbeat"))
            .json(beat)
            .timeout(Duration::from_millis(300))
            .send()
    };
    futures::future::join_all(addrs.iter().map(send)).await;
}

/// One long poll for a lease: the lease, or None on 204.
async fn lease_once(c: &Client, worker: &str, wait_ms: u64) -> Option<Lease> {
    let (code, body) = c
        .call(
            reqwest::Method::POST,
            &format!("/v1/workers/{worker}/lease"),
            Some(&LeaseRequest {
                wait_ms,
                ..Default::default()
            }),
            Some(Duration::from_millis(wait_ms)),
        )
        .await
        .unwrap();
    (code == StatusCode::OK).then(|| {
        serde_json::from_slice::<LeaseAnswer>(&body)
            .unwrap()
            .lease
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_gives_a_worker_only_the_models_it_described() {
    let (mut group, _dir) = group(3, |_| {}).await;
    let c = client(&group.addrs());
    add_model(&c).await;
    let register = |accepts: Option<Vec<String>>| {
        let c = c.clone();
        async move {
            let body = WorkerRegistration {
                accepts,
                ..WorkerRegistration::default()
            };
            let r: WorkerRegistered = c.post("/v1/workers/register", &body).await.unwrap();
            r.worker_id
        }
    };
    // Both register with the leader only; one runs just another model.
    let picky = register(Some(vec!["inception".into()])).await;
    let any = register(None).await;
    let _job: Job = c.post("/v1/jobs", &new_job("j", 4, 1)).await.unwrap();
    let old = group.wait_for_leader(WAIT).await.unwrap();
    group.stop(old).await;
    group.wait_for_leader(WAIT).await.expect("a new leader");
    // The new leader has heard neither: it does not know what they run, so neither gets a
    // batch — not the picky one a model it was never started with.
    assert!(lease_once(&c, &picky, 600).await.is_none());
    assert!(lease_once(&c, &any, 600).await.is_none());
    // Their heartbeats say it.
    beat_all(&group.addrs(), &picky, &json!({"accepts": ["inception"]})).await;
    beat_all(&group.addrs(), &any, &json!({})).await;
    assert!(lease_once(&c, &picky, 600).await.is_none());
    let lease = lease_once(&c, &any, 3000).await.expect("a batch");
    assert_eq!(lease.model, "r18");
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeating_worker_keeps_its_lease_across_a_leader_failover() {
    // One pass per lease: the job's two inputs are two batches.
    let (mut group, _dir) = group(3, |c| {
        c.lease_timeout_ms = 1000;
        c.lease_target_ms = 0;
    })
    .await;
    let c = client(&group.addrs());
    add_model(&c).await;
    let register = || async {
        let r: WorkerRegistered = c
            .post("/v1/workers/register", &WorkerRegistration::default())
            .await
            .unwrap();
        r.worker_id
    };
    let (holder, other) = (register().await, register().await);
    // A worker heartbeats every coordinator as soon as it has registered: each then knows
    // which models it runs (a node it has not described itself to gives it no batch).
    for worker in [&holder, &other] {
        beat_all(&group.addrs(), worker, &json!({})).await;
    }
    let job: Job = c.post("/v1/jobs", &new_job("j", 2, 1)).await.unwrap();
    let held = lease_once(&c, &holder, 1000).await.expect("a batch");
    // The holder heartbeats every coordinator every 100 ms throughout, as a worker does,
    // whoever leads.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let beats = {
        let (addrs, holder) = (group.addrs(), holder.clone());
        tokio::spawn(async move {
            while !*stopped.borrow() {
                beat_all(&addrs, &holder, &json!({})).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => {}
                }
            }
        })
    };
    let old = group.wait_for_leader(WAIT).await.unwrap();
    group.stop(old).await;
    group.wait_for_leader(WAIT).await.expect("a new leader");
    // The other worker gets the job's other batch, and then nothing for several lease
    // timeouts: the held batch is not handed out again.
    let second = lease_once(&c, &other, 3000).await.expect("the other batch");
    assert_ne!(second.batch_id, held.batch_id);
    assert!(
        lease_once(&c, &other, 2000).await.is_none(),
        "the held batch was re-leased"
    );
    let complete = |lease: &Lease| {
        let body = Completion {
            lease_id: lease.lease_id,
            results: None,
            result: Some(format!("results/{}", lease.batch_id)),
            failed: 0,
            compute_ms: 1,
        };
        let path = format!("/v1/batches/{}/complete", lease.batch_id);
        let c = c.clone();
        async move { c.post::<_, CompletionAck>(&path, &body).await.unwrap() }
    };
    assert!(complete(&held).await.accepted);
    assert!(!complete(&held).await.accepted, "counted once");
    assert!(complete(&second).await.accepted);
    let _ = stop.send(true);
    beats.await.unwrap();
    let done: Job = c.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    assert_eq!((done.done, done.batches_done, done.retries), (2, 2, 0));
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_registration_refuse_bad_input_and_keep_the_quorum() {
    let (group, dir) = group(3, |_| {}).await;
    let leader = group.wait_for_leader(WAIT).await.unwrap();
    let node1 = group.addr(1);
    // A coordinator waiting to join as node 6.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let joiner_addr = listener.local_addr().unwrap().to_string();
    let mut config = CoordinatorConfig::new(6, dir.path().join("c6"));
    config.join = true;
    let joiner = idunno_coordinator::start(config, listener).await.unwrap();
    let nobody = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let json_body = |v: Value| Some(("application/json", serde_json::to_vec(&v).unwrap()));
    use reqwest::Method as M;
    let cases: Vec<(M, &str, Body, StatusCode)> = vec![
        // What a fuzzer sent that once broke the group: a node's own address, and ":".
        (
            M::POST,
            "/v1/cluster/members",
            json_body(json!({"id": 2379, "addr": node1})),
            StatusCode::CONFLICT,
        ),
        (
            M::POST,
            "/v1/cluster/members",
            json_body(json!({"id": 10178, "addr": ":"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/cluster/members",
            json_body(json!({"id": 2, "addr": "127.0.0.1:9"})),
            StatusCode::CONFLICT,
        ),
        // Nobody answers there, or someone with another id does.
        (
            M::POST,
            "/v1/cluster/members",
            json_body(json!({"id": 5, "addr": nobody})),
            StatusCode::CONFLICT,
        ),
        (
            M::POST,
            "/v1/cluster/members",
            json_body(json!({"id": 7, "addr": joiner_addr})),
            StatusCode::CONFLICT,
        ),
        (
            M::DELETE,
            "/v1/cluster/members/99",
            None,
            StatusCode::NOT_FOUND,
        ),
        // A storage node at a coordinator's address, or at no address.
        (
            M::POST,
            "/v1/nodes/register",
            json_body(json!({"id": "s9", "addr": node1})),
            StatusCode::CONFLICT,
        ),
        (
            M::POST,
            "/v1/nodes/register",
            json_body(json!({"id": "s9", "addr": ":"})),
            StatusCode::BAD_REQUEST,
        ),
        // Workers that describe themselves impossibly.
        (
            M::POST,
            "/v1/workers/register",
            json_body(json!({"capacity": 0})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/workers/register",
            json_body(json!({"name": "x".repeat(1000)})),
            StatusCode::BAD_REQUEST,
        ),
        (
            M::POST,
            "/v1/workers/register",
            json_body(json!({"accepts": [""]})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, body, want) in &cases {
        let url = format!("http://{}{path}", group.addr(follower(&group, leader)));
        let (code, value) = raw(method.clone(), url, body.clone()).await;
        assert_eq!(code, *want, "{method} {path} {body:?}: {value}");
        let err: ErrorBody = serde_json::from_value(value).unwrap();
        assert!(!err.error.is_empty());
    }
    // The group is as it was, and commits.
    let s = status(&group.addr(leader)).await;
    let ids: Vec<u64> = s.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(s.members.iter().all(|m| m.voter));
    let c = client(&group.addrs());
    add_model(&c).await;
    // The joiner, well named, joins and votes.
    let s: ClusterStatus = c
        .post(
            "/v1/cluster/members",
            &NewMember {
                id: 6,
                addr: joiner_addr.clone(),
                voter: true,
            },
        )
        .await
        .unwrap();
    assert!(s.members.iter().any(|m| m.id == 6 && m.voter));
    joiner.shutdown().await;
    group.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_need_a_credential_and_a_removed_node_says_so() {
    let (mut group, _dir) = group(3, |c| c.cluster_secret = Some("s3cret".into())).await;
    let leader = group.wait_for_leader(WAIT).await.unwrap();
    let victim = follower(&group, leader);
    let addrs = group.addrs();
    let url = |node: u64, path: &str| format!("http://{}{path}", addrs[(node - 1) as usize]);
    let remove = |secret: Option<&'static str>, id: u64| {
        let url = url(leader, &format!("/v1/cluster/members/{id}"));
        async move {
            let mut req = reqwest::Client::new().delete(url);
            if let Some(s) = secret {
                req = req.header("x-idunno-secret", s);
            }
            let resp = req.send().await.unwrap();
            let code = resp.status();
            (code, resp.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(remove(None, victim).await.0, StatusCode::FORBIDDEN);
    assert_eq!(remove(Some("wrong"), victim).await.0, StatusCode::FORBIDDEN);
    assert_eq!(status(&group.addr(leader)).await.members.len(), 3);
    // With the third voter down, removing the second would leave voters of which no majority
    // is reachable: refused.
    let other = (1..=3).find(|id| *id != leader && *id != victim).unwrap();
    group.stop(other).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (code, body) = remove(Some("s3cret"), victim).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    group.restart(other).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (code, body) = remove(Some("s3cret"), victim).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // The removed node says so, rather than "no leader" for ever.
    let said = eventually_value(|| async {
        let (code, v) = raw(reqwest::Method::GET, url(victim, "/v1/jobs"), None).await;
        (code == StatusCode::MISDIRECTED_REQUEST).then_some(v)
    })
    .await;
    assert_eq!(said["code"], "not_a_member", "{said}");
    group.shutdown().await;
}

/// Polls `check` until it gives a value, for up to [`WAIT`].
async fn eventually_value<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < WAIT, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
