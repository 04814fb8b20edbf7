//! `/metrics`, `/healthz` and `/readyz` on every role — coordinator, storage node, worker —
//! after a job and an online request ran; the exposition is parsed with a Prometheus text
//! parser we did not write (`prometheus-parse`).

use idunno::embedded::EmbeddedCluster;
use prometheus_parse::{Scrape, Value as Sample};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{self, cluster, http};

async fn scrape(addr: &str) -> Scrape {
    let (code, body) = http(Method::GET, &format!("http://{addr}/metrics"), &[], None).await;
    assert_eq!(code, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the first sample named `name` whose labels include `labels` (a histogram's
/// value is its count of observations).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Sample::Summary(_) => f64::NAN,
        })
}

async fn ready(addr: &str) -> StatusCode {
    http(Method::GET, &format!("http://{addr}/readyz"), &[], None)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_serves_prometheus_metrics_and_readiness() {
    let (c, _dir): (EmbeddedCluster, _) = cluster(1, 1, 1, |_| {}).await;
    let coordinator = c.coordinator_addrs()[0].clone();
    let node = c.node_addr(0);
    let worker = c.worker(0).unwrap().listen_addr().to_string();
    for addr in [&coordinator, &node, &worker] {
        let (code, _) = http(Method::GET, &format!("http://{addr}/healthz"), &[], None).await;
        assert_eq!(code, StatusCode::OK, "{addr}");
    }
    // A worker with no model loaded is not ready yet.
    let (code, body) = http(Method::GET, &format!("http://{worker}/readyz"), &[], None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(common::json(&body)["error"].is_string());

    let client = c.client();
    common::synthetic_models(&client, &coordinator, &[("fast", 2)]).await;
    let job = common::synthetic_job(&client, "fast", 8, 4, 1).await;
    common::wait_done(&client, job.id, common::WAIT).await;
    let tiny = base64_png();
    let (code, _) = http(
        Method::POST,
        &format!("http://{coordinator}/v2/models/fast/infer"),
        &[],
        Some(
            serde_json::to_vec(&json!({"inputs": [{"name": "image", "shape": [1],
                                                   "datatype": "BYTES", "data": [tiny]}]}))
            .unwrap(),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    for addr in [&coordinator, &node, &worker] {
        assert_eq!(ready(addr).await, StatusCode::OK, "{addr}");
    }

    let s = scrape(&coordinator).await;
    assert_eq!(value(&s, "idunno_raft_is_leader", &[]), Some(1.0));
    assert!(value(&s, "idunno_raft_term", &[]).unwrap() >= 1.0);
    assert!(value(&s, "idunno_raft_applied_index", &[]).unwrap() >= 1.0);
    assert!(value(&s, "idunno_raft_write_seconds", &[]).unwrap() >= 1.0);
    assert!(value(&s, "idunno_raft_append_seconds", &[]).unwrap() >= 1.0);
    assert!(value(&s, "idunno_raft_apply_seconds", &[]).unwrap() >= 1.0);
    assert!(value(&s, "idunno_raft_committed_index", &[]).unwrap() >= 1.0);
    // The job's 8 inputs of a 2 ms model are one lease (two passes of 4), one completion.
    assert!(value(&s, "idunno_lease_wait_seconds", &[]).unwrap() >= 1.0);
    assert!(value(&s, "idunno_query_seconds", &[("model", "fast")]).unwrap() >= 1.0);
    assert!(value(&s, "idunno_online_latency_seconds", &[("model", "fast")]).unwrap() >= 1.0);
    assert!(value(&s, "idunno_online_batch_size", &[("model", "fast")]).unwrap() >= 1.0);
    assert!(
        value(
            &s,
            "idunno_http_requests_total",
            &[("method", "POST"), ("status", "2xx")]
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(value(&s, "idunno_workers_alive", &[]), Some(1.0));
    assert_eq!(value(&s, "idunno_sdfs_replicas_missing", &[]), Some(0.0));
    assert_eq!(value(&s, "idunno_sdfs_repair_queue", &[]), Some(0.0));

    let s = scrape(&node).await;
    assert!(value(&s, "idunno_sdfs_bytes_written_total", &[]).unwrap() > 0.0);
    assert!(value(&s, "idunno_sdfs_bytes_read_total", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&s, "idunno_sdfs_coordinators_reachable", &[]),
        Some(1.0)
    );
    assert!(value(&s, "idunno_http_request_seconds", &[("method", "PUT")]).unwrap() >= 1.0);

    let s = scrape(&worker).await;
    assert!(
        value(
            &s,
            "idunno_worker_forward_seconds",
            &[("model", "fast"), ("batch_size", "4")]
        )
        .unwrap()
            >= 2.0
    );
    assert!(
        value(
            &s,
            "idunno_worker_batches_total",
            &[("model", "fast"), ("kind", "online")]
        )
        .unwrap()
            >= 1.0
    );
    // One forward-pass observation per pass; decoding is per batch (the job's one lease).
    assert!(value(&s, "idunno_worker_decode_seconds", &[("kind", "job")]).unwrap() >= 1.0);
    let busy = value(&s, "idunno_worker_busy_ratio", &[]).unwrap();
    assert!(busy > 0.0 && busy <= 1.0, "{busy}");
    assert_eq!(value(&s, "idunno_worker_models_loaded", &[]), Some(1.0));
    c.shutdown().await;
}

fn base64_png() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(common::tiny_png(9))
}
