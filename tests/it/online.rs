//! Online inference over the Open Inference Protocol (`/v2`): metadata and health, JSON and
//! binary-extension requests, encoded and preprocessed images, classification, dynamic
//! batching, sharing the workers with a running job, a worker killed mid-request, the
//! bearer token, and a stock Triton client (`tritonclient`, from PyPI) against the server.

use base64::Engine;
use idunno_api::v2::{decode_bytes_elements, decode_f32s, encode_f32s, HEADER_LENGTH_HEADER};
use idunno_api::Client;
use idunno_models::{weights, Arch};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{self, cluster, eventually, http, put_file};

const PHOTOS: [&str; 2] = ["chelsea.png", "rocket.jpg"];

fn sample(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Uploads generated ResNet-18 weights and registers model `r18` with `online` batching.
async fn register_r18(client: &Client, addr: &str, online: Value) {
    put_file(
        addr,
        "models/r18.safetensors",
        weights::generate_to_bytes(Arch::ResNet18, 7).unwrap(),
    )
    .await;
    let _: Value = client
        .post(
            "/v1/models",
            &json!({"name": "r18", "arch": "resnet18", "weights": "models/r18.safetensors",
                    "online": online}),
        )
        .await
        .unwrap();
}

/// `POST /v2/models/{model}/infer` with a JSON body; status and parsed body.
async fn infer_json(addr: &str, model: &str, body: Value) -> (StatusCode, Value) {
    let (code, bytes) = http(
        Method::POST,
        &format!("http://{addr}/v2/models/{model}/infer"),
        &[("content-type", "application/json")],
        Some(serde_json::to_vec(&body).unwrap()),
    )
    .await;
    (code, common::json(&bytes))
}

/// Waits until the model is ready on `addr` (a live worker runs it).
async fn wait_ready(addr: &str, model: &str) {
    eventually("the model to be ready", || async {
        let (code, _) = http(
            Method::GET,
            &format!("http://{addr}/v2/models/{model}/ready"),
            &[],
            None,
        )
        .await;
        (code == StatusCode::OK).then_some(())
    })
    .await;
}

/// The top class label of an output `"score:index:label"`.
fn label_of(class: &Value) -> String {
    let s = class.as_str().unwrap();
    s.splitn(3, ':').nth(2).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_answers_as_the_jobs_do_in_json_and_in_binary() {
    common::init_log();
    let (mut c, _dir) = cluster(1, 1, 1, |_| {}).await;
    let addr = c.coordinator_addrs()[0].clone();
    let client = c.client();
    register_r18(&client, &addr, json!({})).await;

    // Server metadata, health, model metadata; unknown models and versions are 404 JSON.
    let (code, body) = http(Method::GET, &format!("http://{addr}/v2"), &[], None).await;
    assert_eq!(code, StatusCode::OK);
    let meta = common::json(&body);
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    let (code, _) = http(
        Method::GET,
        &format!("http://{addr}/v2/health/live"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    wait_ready(&addr, "r18").await;
    let (code, body) = http(
        Method::GET,
        &format!("http://{addr}/v2/models/r18"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let meta = common::json(&body);
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]})
    );
    assert_eq!(meta["outputs"][1]["name"], "probabilities");
    for path in ["/v2/models/nope", "/v2/models/r18/versions/2"] {
        let (code, body) = http(Method::GET, &format!("http://{addr}{path}"), &[], None).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert!(common::json(&body)["error"].is_string());
    }

    // The same photos as a job: the online answer names the same top class.
    for (i, p) in PHOTOS.iter().enumerate() {
        put_file(
            &addr,
            &format!("in/{i}.{}", p.rsplit('.').next().unwrap()),
            sample(p),
        )
        .await;
    }
    let names: Vec<String> = PHOTOS
        .iter()
        .enumerate()
        .map(|(i, p)| format!("in/{i}.{}", p.rsplit('.').next().unwrap()))
        .collect();
    let job: idunno_api::job::Job = client
        .post(
            "/v1/jobs",
            &json!({"model": "r18", "inputs": names, "batch_size": 2, "start": true}),
        )
        .await
        .unwrap();
    common::wait_done(&client, job.id, common::WAIT).await;
    let results: Vec<idunno_api::result::QueryResult> = client
        .get(&format!("/v1/jobs/{}/results", job.id))
        .await
        .unwrap();

    let photos: Vec<String> = PHOTOS.iter().map(|p| b64(&sample(p))).collect();
    let (code, answer) = infer_json(
        &addr,
        "r18",
        json!({
            "id": "q1",
            "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": photos}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}},
                        {"name": "logits"}]
        }),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["id"], "q1");
    assert_eq!(answer["model_name"], "r18");
    let classes = &answer["outputs"][0];
    assert_eq!(classes["datatype"], "BYTES");
    assert_eq!(classes["shape"], json!([2, 3]));
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            label_of(&classes["data"][i * 3]),
            r.top[0].label,
            "photo {i}"
        );
    }
    let logits = &answer["outputs"][1];
    assert_eq!(logits["shape"], json!([2, 1000]));
    let json_logits: Vec<f32> = logits["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();

    // The first photo preprocessed here and sent as an FP32 tensor through the binary
    // extension, answered in binary: the same logits.
    let image = image::load_from_memory(&sample(PHOTOS[0])).unwrap();
    let tensor = idunno_models::preprocess_for(Arch::ResNet18)
        .apply(&image, &idunno_models::Device::Cpu)
        .unwrap();
    let values: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
    let raw = encode_f32s(&values);
    let header = serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true}},
                    {"name": "probabilities", "parameters": {"classification": 1, "binary_data": true}}]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&raw);
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v2/models/r18/versions/1/infer"))
        .header(HEADER_LENGTH_HEADER, header.len().to_string())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let json_len: usize = resp.headers()[HEADER_LENGTH_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    let head = common::json(&bytes[..json_len]);
    let logits_size = head["outputs"][0]["parameters"]["binary_data_size"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(logits_size, 4000);
    let binary_logits = decode_f32s(&bytes[json_len..json_len + logits_size]).unwrap();
    for (a, b) in binary_logits.iter().zip(&json_logits[..1000]) {
        assert!((a - b).abs() < 1e-3, "tensor path {a} vs image path {b}");
    }
    let top = decode_bytes_elements(&bytes[json_len + logits_size..]).unwrap();
    let top = String::from_utf8(top[0].clone()).unwrap();
    assert_eq!(label_of(&json!(top)), results[0].top[0].label);

    // Bad input: a clear 400 with a JSON error, and the server goes on.
    let bad = [
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"not an image")]}]}),
        json!({"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0]}]}),
        json!({"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]}),
        json!({"inputs": "nope"}),
    ];
    for b in bad {
        let (code, answer) = infer_json(&addr, "r18", b.clone()).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{b} → {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    let (code, _) = infer_json(&addr, "nope", json!({"inputs": []})).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    c.kill_worker(0).await;
    c.shutdown().await;
}

/// The leader's count of online batches handed out.
async fn online_batches(addr: &str) -> u64 {
    let (_, body) = http(Method::GET, &format!("http://{addr}/metrics"), &[], None).await;
    let text = String::from_utf8(body).unwrap();
    // The batch-size histogram's count, summed over models.
    text.lines()
        .filter(|l| l.starts_with("idunno_online_batch_size_count"))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_each_gets_its_own_answer() {
    let (c, _dir) = cluster(1, 1, 1, |_| {}).await;
    let addr = c.coordinator_addrs()[0].clone();
    register_r18(
        &c.client(),
        &addr,
        json!({"max_batch_size": 8, "max_queue_delay_ms": 300}),
    )
    .await;
    wait_ready(&addr, "r18").await;
    let before = online_batches(&addr).await;
    // Eight single-photo requests at once, alternating two photos: each answer is its own
    // photo's (the two photos' answers differ), and they went out in fewer than eight batches.
    let requests = (0..8).map(|i| {
        let addr = addr.clone();
        async move {
            let photo = b64(&sample(PHOTOS[i % 2]));
            let (code, answer) = infer_json(
                &addr,
                "r18",
                json!({"id": format!("r{i}"),
                       "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [[photo]]}],
                       "outputs": [{"name": "logits"}]}),
            )
            .await;
            assert_eq!(code, StatusCode::OK, "{answer}");
            assert_eq!(answer["id"], format!("r{i}"));
            answer["outputs"][0]["data"].as_array().unwrap()[..5].to_vec()
        }
    });
    let answers = futures::future::join_all(requests).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &answers[i % 2], "request {i} got another photo's answer");
    }
    assert_ne!(answers[0], answers[1]);
    let batches = online_batches(&addr).await - before;
    assert!(
        (1..8).contains(&batches),
        "8 requests went out in {batches} batches"
    );
    c.shutdown().await;
}

/// The workers that list `model` as loaded.
async fn loaded_on(client: &Client, model: &str) -> usize {
    let workers: Vec<Value> = client.get("/v1/workers").await.unwrap();
    workers
        .iter()
        .filter(|w| {
            w["loaded"]
                .as_array()
                .is_some_and(|l| l.iter().any(|m| m == model))
        })
        .count()
}

/// Registers synthetic model `name` (`cost_ms` of CPU per image, served one image per batch,
/// a request's queue delay `delay_ms`; with one image per batch every request is due at once,
/// so the delay only sets when a request spills to a worker without the model) and loads it
/// on one worker: one request, then that worker's heartbeat lists it.
async fn one_image_batches_loaded_once(
    client: &Client,
    addr: &str,
    name: &str,
    cost_ms: u64,
    delay_ms: u64,
) {
    common::synthetic_models(client, addr, &[]).await;
    let _: Value = client
        .post(
            "/v1/models",
            &json!({"name": name, "arch": "synthetic", "weights": "models/syn.safetensors",
                    "cost_ms": cost_ms, "online": {"max_batch_size": 1, "max_queue_delay_ms": delay_ms}}),
        )
        .await
        .unwrap();
    wait_ready(addr, name).await;
    infer_tiny(addr, name, 0).await;
    eventually("one worker to list the model as loaded", || async {
        (loaded_on(client, name).await == 1).then_some(())
    })
    .await;
}

/// Online request `i` for `model` (one tiny image), answered 200.
async fn infer_tiny(addr: &str, model: &str, i: usize) {
    let (code, answer) = infer_json(
        addr,
        model,
        json!({"id": format!("r{i}"),
               "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                           "data": [[b64(&common::tiny_png(3))]]}]}),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "request {i}: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_spills_to_a_second_worker_when_the_loaded_one_cannot_keep_up() {
    common::init_log();
    let (c, _dir) = cluster(1, 1, 2, |_| {}).await;
    let addr = c.coordinator_addrs()[0].clone();
    let client = c.client();
    // 150 ms of CPU per image, one image per batch: one worker serves ~6 requests/s.
    one_image_batches_loaded_once(&client, &addr, "slow", 150, 0).await;
    // Twelve at once would take that worker ~1.8 s; the oldest waits past the spill limit
    // within a few of them, so the other worker loads the model and serves too.
    futures::future::join_all((1..=12).map(|i| infer_tiny(&addr, "slow", i))).await;
    // (Workers report what they have loaded in their heartbeats.)
    eventually("the second worker to have loaded the model", || async {
        (loaded_on(&client, "slow").await == 2).then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_takes_a_due_batch_while_the_loaded_one_is_busy() {
    common::init_log();
    let (c, _dir) = cluster(1, 1, 2, |_| {}).await;
    let addr = c.coordinator_addrs()[0].clone();
    let client = c.client();
    // 400 ms of CPU per image, one image per batch. The 10 s queue delay (the most a model
    // may set) puts the spill limit past the whole test: only "every worker with the model
    // is occupied" can hand a request to the other worker.
    one_image_batches_loaded_once(&client, &addr, "steady", 400, 10_000).await;
    // Six at once: the loaded worker (two threads) runs two one-image batches at a time and
    // holds one more, asking for no further until it starts that, so the rest are due while
    // it is occupied and go to the other worker. Were they left to the loaded worker, it would
    // answer all six within ~2 s, well before any spill.
    futures::future::join_all((1..=6).map(|i| infer_tiny(&addr, "steady", i))).await;
    eventually("the second worker to have loaded the model", || async {
        (loaded_on(&client, "steady").await == 2).then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_worker_with_room_keeps_its_models_requests() {
    common::init_log();
    let (c, _dir) = cluster(1, 1, 2, |_| {}).await;
    let addr = c.coordinator_addrs()[0].clone();
    let client = c.client();
    one_image_batches_loaded_once(&client, &addr, "steady", 400, 10_000).await;
    // A worker is ready once it has a model loaded: only the one that served so far.
    let ready = || async {
        let mut ready = Vec::new();
        for i in 0..2 {
            let worker = c.worker(i).unwrap().listen_addr();
            let (code, _) = http(Method::GET, &format!("http://{worker}/readyz"), &[], None).await;
            ready.push(code == StatusCode::OK);
        }
        ready
    };
    let before = ready().await;
    assert_eq!(before.iter().filter(|r| **r).count(), 1, "{before:?}");
    // Two at once: the loaded worker runs them side by side (two threads), asking again as
    // soon as it starts the first, so the other worker is not given the second (it would
    // load the model for it: ready then, before answering).
    futures::future::join_all((1..=2).map(|i| infer_tiny(&addr, "steady", i))).await;
    assert_eq!(ready().await, before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_survives_its_worker_being_killed_and_is_answered_once() {
    let (mut c, _dir) = cluster(1, 1, 1, |_| {}).await;
    let addr = c.coordinator_addrs()[0].clone();
    let client = c.client();
    common::synthetic_models(&client, &addr, &[("slow", 1500)]).await;
    wait_ready(&addr, "slow").await;
    let tiny = b64(&common::tiny_png(3));
    let request = {
        let addr = addr.clone();
        tokio::spawn(async move {
            infer_json(
                &addr,
                "slow",
                json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [tiny]}],
                       "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]}),
            )
            .await
        })
    };
    // The only worker has taken the batch; a second one joins and the first dies mid-pass.
    eventually("the batch to be handed out", || async {
        (online_batches(&addr).await >= 1).then_some(())
    })
    .await;
    c.add_worker(|_| {}).await.unwrap();
    c.kill_worker(0).await;
    let (code, answer) = request.await.unwrap();
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([1, 1]));
    assert!(online_batches(&addr).await >= 2, "the batch was run again");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_requests_are_served_while_a_long_job_runs() {
    let (c, _dir) = cluster(1, 1, 1, |_| {}).await;
    let addr = c.coordinator_addrs()[0].clone();
    let client = c.client();
    common::synthetic_models(&client, &addr, &[("busy", 20), ("quick", 5)]).await;
    let job = common::synthetic_job(&client, "busy", 2000, 8, 1).await;
    wait_ready(&addr, "quick").await;
    let tiny = b64(&common::tiny_png(5));
    // The job needs ~40 s of worker time; the requests are not held back until it ends.
    for i in 0..5 {
        let (code, answer) = infer_json(
            &addr,
            "quick",
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [tiny.clone()]}]}),
        )
        .await;
        assert_eq!(code, StatusCode::OK, "request {i}: {answer}");
    }
    let job: idunno_api::job::Job = client.get(&format!("/v1/jobs/{}", job.id)).await.unwrap();
    assert_ne!(
        job.state,
        idunno_api::job::JobState::Done,
        "the job ran alongside"
    );
    assert!(job.done > 0, "and it made progress meanwhile");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_covers_v2_but_not_its_health_probes_and_followers_forward() {
    let (c, _dir) = cluster(3, 1, 1, |cfg| cfg.token = Some("s3cret".into())).await;
    let addrs = c.coordinator_addrs();
    let client = Client::new(&addrs, Some("s3cret".into())).unwrap();
    let leader = c.coordinators.wait_for_leader(common::WAIT).await.unwrap();
    let follower = addrs
        .iter()
        .enumerate()
        .find(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, a)| a.clone())
        .unwrap();
    // Weights for a synthetic model, uploaded with the token.
    let weights = weights::generate_to_bytes(Arch::Synthetic, 3).unwrap();
    let (code, _) = http(
        Method::PUT,
        &format!("http://{follower}/v1/files/models/syn.safetensors"),
        &[("authorization", "Bearer s3cret")],
        Some(weights),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    let _: Value = client
        .post(
            "/v1/models",
            &json!({"name": "s", "arch": "synthetic", "weights": "models/syn.safetensors", "cost_ms": 1}),
        )
        .await
        .unwrap();
    let body = serde_json::to_vec(
        &json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                       "data": [b64(&common::tiny_png(1))]}]}),
    )
    .unwrap();
    let url = format!("http://{follower}/v2/models/s/infer");
    let (code, answer) = http(Method::POST, &url, &[], Some(body.clone())).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(common::json(&answer)["error"].is_string());
    let (code, _) = http(
        Method::POST,
        &url,
        &[("authorization", "Bearer wrong")],
        Some(body.clone()),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = http(
        Method::GET,
        &format!("http://{follower}/v2/models/s"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = http(
        Method::GET,
        &format!("http://{follower}/v2/health/live"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let auth = [("authorization", "Bearer s3cret")];
    let answer = eventually("an answer through a follower", || {
        let (url, body) = (url.clone(), body.clone());
        async move {
            let (code, answer) = http(Method::POST, &url, &auth, Some(body)).await;
            (code == StatusCode::OK).then(|| common::json(&answer))
        }
    })
    .await;
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 2);
    c.shutdown().await;
}

/// The Python interpreter of the virtual environment `scripts/setup-v2-client.sh` makes.
fn triton_python() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/v2-client/bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_triton_client_classifies_through_the_binary_extension() {
    let python = triton_python();
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh makes it (scripts/setup-v2-client.sh)",
        python.display()
    );
    let (c, _dir) = cluster(1, 1, 1, |_| {}).await;
    let addr = c.coordinator_addrs()[0].clone();
    register_r18(&c.client(), &addr, json!({})).await;
    wait_ready(&addr, "r18").await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/v2_client_check.py");
    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(PHOTOS[0]);
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&addr)
        .arg("r18")
        .arg(&photo)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client's view: one line of JSON with what it decoded.
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // The same photo through our own JSON path.
    let (_, answer) = infer_json(
        &addr,
        "r18",
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(&sample(PHOTOS[0]))]}],
               "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}),
    )
    .await;
    let ours: Vec<String> = answer["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(label_of)
        .collect();
    assert_eq!(seen["bytes_top3"], json!(ours), "{seen}");
    assert_eq!(seen["argmax_agrees"], json!(true), "{seen}");
    assert_eq!(seen["logits_shape"], json!([1, 1000]));
    c.shutdown().await;
}
