//! Inference jobs end to end: coordinators, storage nodes and workers in one process, each a
//! real HTTP server; a generated ResNet-18 run by candle on the photos in `samples/`.

use crate::common;

use std::collections::{BTreeMap, HashSet};

use common::{cluster, eventually, http, json};
use idunno::embedded::EmbeddedCluster;
use idunno_api::job::{BatchInfo, BatchStateInfo, Job, JobState};
use idunno_api::model::Model;
use idunno_api::result::QueryResult;
use idunno_api::worker::WorkerInfo;
use idunno_api::Client;
use idunno_models::{weights, Arch};
use idunno_worker::WorkerConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;

const SAMPLES: [&str; 4] = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];

fn sample(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn url(addr: &str, path: &str) -> String {
    format!("http://{addr}{path}")
}

async fn put(addr: &str, name: &str, bytes: Vec<u8>) {
    let (code, body) = http(
        Method::PUT,
        &url(addr, &format!("/v1/files/{name}")),
        &[],
        Some(bytes),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::CREATED,
        "put {name}: {}",
        String::from_utf8_lossy(&body)
    );
}

/// Uploads generated ResNet-18 weights and registers them as model `r18`.
async fn register_model(client: &Client, addr: &str) {
    put(
        addr,
        "models/r18.safetensors",
        weights::generate_to_bytes(Arch::ResNet18, 7).unwrap(),
    )
    .await;
    let _: Model = client
        .post(
            "/v1/models",
            &json!({"name": "r18", "arch": "resnet18", "weights": "models/r18.safetensors"}),
        )
        .await
        .unwrap();
}

/// Uploads `n` inputs named `in/NNN.<ext>` cycling through the sample photos; returns the names.
async fn upload_inputs(addr: &str, n: usize) -> Vec<String> {
    let photos: Vec<Vec<u8>> = SAMPLES.iter().map(|s| sample(s)).collect();
    let mut names = Vec::new();
    for i in 0..n {
        let which = i % SAMPLES.len();
        let ext = SAMPLES[which].rsplit('.').next().unwrap();
        let name = format!("in/{i:03}.{ext}");
        put(addr, &name, photos[which].clone()).await;
        names.push(name);
    }
    names
}

async fn wait_done(client: &Client, id: u64) -> Job {
    eventually(&format!("job {id} done"), || async {
        let job: Job = client.get(&format!("/v1/jobs/{id}")).await.ok()?;
        (job.state == JobState::Done).then_some(job)
    })
    .await
}

async fn results(client: &Client, id: u64) -> Vec<QueryResult> {
    client.get(&format!("/v1/jobs/{id}/results")).await.unwrap()
}

/// Every input has exactly one result, in input order.
fn assert_one_result_each(results: &[QueryResult], inputs: &[String]) {
    let got: Vec<(u64, &str)> = results
        .iter()
        .map(|r| (r.index, r.input.as_str()))
        .collect();
    let want: Vec<(u64, &str)> = inputs
        .iter()
        .enumerate()
        .map(|(i, name)| (i as u64, name.as_str()))
        .collect();
    assert_eq!(got, want);
}

/// A successful result: five classes, best first, probabilities that look like a softmax.
fn assert_classified(r: &QueryResult) {
    assert!(r.error.is_none(), "{}: {:?}", r.input, r.error);
    assert_eq!(r.top.len(), 5, "{}", r.input);
    let sum: f32 = r.top.iter().map(|c| c.probability).sum();
    assert!(sum > 0.0 && sum <= 1.0 + 1e-4, "{}: {sum}", r.input);
    for pair in r.top.windows(2) {
        assert!(pair[0].probability >= pair[1].probability, "{}", r.input);
    }
    for class in &r.top {
        assert!(class.index < 1000 && !class.label.is_empty(), "{class:?}");
    }
}

async fn two_worker_cluster(lease_timeout_ms: u64) -> (EmbeddedCluster, common::TestDir) {
    cluster(1, 3, 2, |c| c.lease_timeout_ms = lease_timeout_ms).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_two_workers_with_one_result_per_input_in_order() {
    let (cluster, _dir) = two_worker_cluster(5_000).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let client = cluster.client();
    register_model(&client, &addr).await;

    // The original's "train" phase: every worker loads the model before the job starts.
    let (code, body) = http(Method::POST, &url(&addr, "/v1/models/r18/load"), &[], None).await;
    assert!(code.is_success(), "{}", String::from_utf8_lossy(&body));
    eventually("r18 loaded on both workers", || async {
        let model: Model = client.get("/v1/models/r18").await.ok()?;
        (model.loaded_on.len() == 2).then_some(())
    })
    .await;

    let mut inputs = upload_inputs(&addr, 54).await;
    put(&addr, "in/notes.txt", b"this is not an image".to_vec()).await;
    inputs.insert(17, "in/notes.txt".to_string());
    inputs.insert(40, "in/never-uploaded.png".to_string());
    let job: Job = client
        .post(
            "/v1/jobs",
            &json!({"name": "photos", "model": "r18", "inputs": inputs, "batch_size": 4, "start": true}),
        )
        .await
        .unwrap();
    assert_eq!(job.queries, 56);

    let job = wait_done(&client, job.id).await;
    assert_eq!((job.done, job.failed), (56, 2), "{job:?}");
    let results = results(&client, job.id).await;
    assert_one_result_each(&results, &inputs);
    let mut top1_by_photo: BTreeMap<String, HashSet<usize>> = BTreeMap::new();
    for r in &results {
        match r.index {
            17 | 40 => {
                assert!(r.top.is_empty(), "{r:?}");
                assert!(r.error.as_deref().is_some_and(|e| !e.is_empty()), "{r:?}");
            }
            _ => {
                assert_classified(r);
                let photo = SAMPLES[(r.input[3..6].parse::<usize>().unwrap()) % SAMPLES.len()];
                top1_by_photo
                    .entry(photo.to_string())
                    .or_default()
                    .insert(r.top[0].index);
            }
        }
    }
    // The same photo gets the same answer whichever worker and batch ran it.
    assert_eq!(top1_by_photo.len(), 4);
    for (photo, classes) in &top1_by_photo {
        assert_eq!(classes.len(), 1, "{photo}: {classes:?}");
    }
    // Both workers took part.
    let batches: Vec<serde_json::Value> = client
        .get(&format!("/v1/jobs/{}/batches", job.id))
        .await
        .unwrap();
    let workers: HashSet<String> = batches
        .iter()
        .map(|b| b["state"]["worker"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");

    // An unknown model is refused when the job is created, and nothing is created.
    let (code, body) = http(
        Method::POST,
        &url(&addr, "/v1/jobs"),
        &[("content-type", "application/json")],
        Some(
            serde_json::to_vec(
                &json!({"model": "nope", "inputs": ["in/000.png"], "batch_size": 1}),
            )
            .unwrap(),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(json(&body)["error"].as_str().unwrap().contains("nope"));
    let jobs: Vec<Job> = client.get("/v1/jobs").await.unwrap();
    assert_eq!(jobs.len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing() {
    let (mut cluster, _dir) = two_worker_cluster(1_500).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let client = cluster.client();
    register_model(&client, &addr).await;
    let inputs = upload_inputs(&addr, 24).await;
    let job: Job = client
        .post(
            "/v1/jobs",
            &json!({"model": "r18", "inputs": {"prefix": "in/"}, "batch_size": 2, "start": true}),
        )
        .await
        .unwrap();
    eventually("6 queries done", || async {
        let job: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.ok()?;
        (job.done >= 6).then_some(())
    })
    .await;
    // A crash: worker 1's leases come back only when they expire.
    cluster.kill_worker(0).await;
    cluster.add_worker(|_| {}).await.unwrap();

    let job = wait_done(&client, job.id).await;
    assert_eq!((job.done, job.failed), (24, 0), "{job:?}");
    assert!(
        job.retries >= 1,
        "the killed worker's lease was run again: {job:?}"
    );
    let results = results(&client, job.id).await;
    assert_one_result_each(&results, &inputs);
    results.iter().for_each(assert_classified);
    cluster.shutdown().await;
}

/// The batches of a job leased to `worker` now.
fn leased_to<'a>(batches: &'a [BatchInfo], worker: &str) -> Vec<&'a BatchInfo> {
    batches
        .iter()
        .filter(|b| matches!(&b.state, BatchStateInfo::Leased { worker: w, .. } if w == worker))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_finishes_its_batch_gives_back_the_next_and_deregisters() {
    // Leases of silent workers expire after a minute here, and a new leader expires none in
    // its first minute: a batch the stopped worker kept would hold the job for longer than
    // any wait below, so the job finishes only if every batch came back through a release.
    let (mut cluster, dir) = cluster(1, 3, 0, |c| c.lease_timeout_ms = 60_000).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let client = cluster.client();
    register_model(&client, &addr).await;
    let inputs = upload_inputs(&addr, 12).await;
    // The worker to stop is started here, so that its handle, and the counters its stop
    // returns, are the test's.
    let mut config = WorkerConfig::new(cluster.coordinator_addrs(), dir.path().join("leaving"));
    config.name = Some("leaving".into());
    config.batch_wait_ms = 2_000;
    let leaving = idunno_worker::start(config).await.unwrap();
    let id = leaving.worker_id().to_string();
    let job: Job = client
        .post(
            "/v1/jobs",
            &json!({"model": "r18", "inputs": {"prefix": "in/"}, "batch_size": 2, "start": true}),
        )
        .await
        .unwrap();
    let batches_path = format!("/v1/jobs/{}/batches", job.id);

    // Its first batch waits for the model to download and load; meanwhile the next batch is
    // leased and prepared but cannot start. Stop it in that state.
    let held = eventually("one batch in hand and one prepared", || async {
        let batches: Vec<BatchInfo> = client.get(&batches_path).await.ok()?;
        let held: Vec<String> = leased_to(&batches, &id)
            .iter()
            .map(|b| b.id.clone())
            .collect();
        // Checked after the batch list: the model was still loading when it was taken.
        let loading = leaving.loaded_models().is_empty();
        (held.len() == 2 && leaving.stats().leases == 2 && loading).then_some(held)
    })
    .await;
    let stats = leaving.stop().await.unwrap();
    assert_eq!(
        (stats.leases, stats.batches, stats.released),
        (2, 1, 1),
        "the batch in hand is finished and the prepared one given back: {stats:?}"
    );

    // Deregistered: the coordinator no longer lists it.
    let workers: Vec<WorkerInfo> = client.get("/v1/workers").await.unwrap();
    assert!(workers.iter().all(|w| w.id != id), "{workers:?}");
    // Of its two batches, one is done by it and the other is back in the queue (one retry:
    // the release), leased to no one, before any other worker exists.
    let batches: Vec<BatchInfo> = client.get(&batches_path).await.unwrap();
    let state = |batch: &str| {
        batches
            .iter()
            .find(|b| b.id == batch)
            .map(|b| b.state.clone())
            .unwrap()
    };
    let (finished, given_back): (Vec<&String>, Vec<&String>) = held.iter().partition(
        |b| matches!(state(b), BatchStateInfo::Done { ref worker, .. } if *worker == id),
    );
    assert_eq!((finished.len(), given_back.len()), (1, 1), "{batches:?}");
    assert_eq!(state(given_back[0]), BatchStateInfo::Pending, "{batches:?}");
    assert!(leased_to(&batches, &id).is_empty(), "{batches:?}");
    let now: Job = client.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    let finished_len = batches.iter().find(|b| &b.id == finished[0]).unwrap().len;
    assert_eq!(
        (now.done, now.retries),
        (u64::from(finished_len), 1),
        "{now:?}"
    );

    // Another worker runs the rest, the given-back batch included.
    let other = cluster.add_worker(|_| {}).await.unwrap();
    let other_id = cluster.worker(other).unwrap().worker_id().to_string();
    let job = wait_done(&client, job.id).await;
    assert_eq!((job.done, job.failed), (12, 0), "{job:?}");
    assert_eq!(job.retries, 1, "only the release put a batch back: {job:?}");
    let batches: Vec<BatchInfo> = client.get(&batches_path).await.unwrap();
    let rerun = batches.iter().find(|b| b.id == *given_back[0]).unwrap();
    assert!(
        matches!(&rerun.state, BatchStateInfo::Done { worker, .. } if *worker == other_id),
        "{rerun:?}"
    );
    let results = results(&client, job.id).await;
    assert_one_result_each(&results, &inputs);
    results.iter().for_each(assert_classified);
    cluster.shutdown().await;
}

/// A worker's side of the protocol by hand: a completion that carries its results object has
/// it stored as `results/<job>/<batch>.json` with the completion, and only the completion that
/// counts stores anything; malformed completions get a 400 and store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_stores_its_results_object_only_when_it_counts() {
    use idunno_api::result::{result_path, BatchResult, Class};
    use idunno_api::worker::{
        Completion, CompletionAck, LeaseAnswer, LeaseRequest, WorkerRegistered, WorkerRegistration,
    };
    let (cluster, _dir) = cluster(1, 1, 0, |c| c.lease_timeout_ms = 500).await;
    let addr = cluster.coordinator_addrs()[0].to_string();
    let client = cluster.client();
    common::synthetic_models(&client, &addr, &[("syn", 1)]).await;
    let job = common::synthetic_job(&client, "syn", 2, 2, 1).await;
    let register = || async {
        let r: WorkerRegistered = client
            .post("/v1/workers/register", &WorkerRegistration::default())
            .await
            .unwrap();
        r.worker_id
    };
    let lease = |worker: String| {
        let client = client.clone();
        async move {
            let answer: LeaseAnswer = client
                .post(
                    &format!("/v1/workers/{worker}/lease"),
                    &LeaseRequest {
                        wait_ms: 5000,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            answer.lease.expect("a batch")
        }
    };
    let (slow, fast) = (register().await, register().await);
    let first = lease(slow.clone()).await;
    // `slow` never heartbeats: its lease expires and the batch goes to `fast`.
    let second = lease(fast.clone()).await;
    assert_eq!(second.batch_id, first.batch_id);
    let object = |worker: &str, class: usize| BatchResult {
        job_id: job.id,
        batch_id: first.batch_id.clone(),
        model: "syn".into(),
        worker: worker.into(),
        compute_ms: 3,
        results: (0..2)
            .map(|i| idunno_api::result::QueryResult {
                index: i,
                input: "in/tiny.png".into(),
                top: vec![Class {
                    index: class,
                    label: idunno_models::imagenet_label(class).into(),
                    probability: 1.0,
                }],
                error: (i == 1).then(|| "cannot decode".to_string()),
            })
            .collect(),
    };
    let url = format!("http://{addr}/v1/batches/{}/complete", first.batch_id);
    let post = |body: serde_json::Value| {
        let url = url.clone();
        async move {
            http(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                Some(body.to_string().into_bytes()),
            )
            .await
        }
    };
    let name = result_path(job.id, &first.batch_id);
    let file_url = format!("http://{addr}/v1/files/{name}");

    // Malformed: neither form, both forms, another batch's object, a result missing, results
    // out of input order. A 400 with a reason each, and nothing stored.
    let mut other_batch = serde_json::to_value(object(&fast, 1)).unwrap();
    other_batch["batch_id"] = json!(format!("{}-9", job.id));
    let mut short = object(&fast, 1);
    short.results.pop();
    let mut shuffled = object(&fast, 1);
    shuffled.results.reverse();
    for (body, reason) in [
        (json!({"lease_id": second.lease_id}), "needs"),
        (
            json!({"lease_id": second.lease_id, "result": "r", "results": object(&fast, 1)}),
            "not both",
        ),
        (
            json!({"lease_id": second.lease_id, "results": other_batch}),
            "not batch",
        ),
        (
            json!({"lease_id": second.lease_id, "results": short}),
            "one result per query",
        ),
        (
            json!({"lease_id": second.lease_id, "results": shuffled}),
            "one result per query",
        ),
    ] {
        let (code, answer) = post(body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let message = json(&answer)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(reason), "{message}");
    }
    assert_eq!(
        http(Method::GET, &file_url, &[], None).await.0,
        StatusCode::NOT_FOUND
    );

    // The first completion counts: its object is the file, read back byte for byte.
    let counted = Completion {
        lease_id: second.lease_id,
        results: Some(object(&fast, 1)),
        result: None,
        failed: 0,
        compute_ms: 0,
    };
    let path = format!("/v1/batches/{}/complete", first.batch_id);
    let ack: CompletionAck = client.post(&path, &counted).await.unwrap();
    assert!(ack.accepted);
    let (code, body) = http(Method::GET, &file_url, &[], None).await;
    assert_eq!(code, StatusCode::OK);
    let stored: BatchResult = serde_json::from_slice(&body).unwrap();
    assert_eq!(stored, object(&fast, 1));
    let done = common::wait_done(&client, job.id, std::time::Duration::from_secs(5)).await;
    assert_eq!(
        (done.done, done.failed),
        (2, 1),
        "failed counted from the object"
    );

    // A retry of it and the slow worker's late completion are acknowledged and dropped: the
    // name keeps its one version, with the counted content.
    let ack: CompletionAck = client.post(&path, &counted).await.unwrap();
    assert!(!ack.accepted);
    let late = Completion {
        lease_id: first.lease_id,
        results: Some(object(&slow, 2)),
        ..counted.clone()
    };
    let ack: CompletionAck = client.post(&path, &late).await.unwrap();
    assert!(!ack.accepted);
    let (code, body) = http(Method::GET, &format!("{file_url}/versions"), &[], None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(json(&body).as_array().map(Vec::len), Some(1), "one version");
    let (_, body) = http(Method::GET, &file_url, &[], None).await;
    assert_eq!(
        serde_json::from_slice::<BatchResult>(&body).unwrap(),
        object(&fast, 1)
    );
    let results = results(&client, job.id).await;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].top[0].index, 1);
    cluster.shutdown().await;
}
