//! A batch's results: assembled in input order into one object, and reported to the
//! coordinators as the batch's completion, which carries it: the leader stores it in SDFS
//! (`results/<job>/<batch>.json`) and commits it with the completion, one request and one
//! Raft entry per batch.
//!
//! Publishing runs in its own task (the reporter), so the compute loop goes straight on to
//! the next batch instead of waiting on the network. A completion carries the lease id and is
//! idempotent on the coordinator's side: the first completion of a batch counts (and only its
//! results object is stored), later ones are acknowledged with `accepted: false`. A
//! completion that no coordinator takes within [`COMPLETION_DEADLINE`] (5xx answers —
//! including storage nodes that cannot take the object — and unreachable coordinators are
//! retried until then) gives the lease back, so the batch runs again promptly instead of
//! waiting out its lease's hard deadline.

use std::sync::Arc;
use std::time::Duration;

use idunno_api::result::{BatchResult, Class, QueryResult};
use idunno_api::worker::{Completion, CompletionAck, Lease};
use reqwest::Method;
use tokio::sync::mpsc;

use crate::coordinator::{call_until_answered, encode_segment};
use crate::error::WorkerError;
use crate::release::release;
use crate::shared::Shared;

/// The answer for one query: its top classes, or why it has none.
pub type QueryOutcome = Result<Vec<Class>, String>;

/// How long a completion keeps trying coordinators that are down or have no leader.
const COMPLETION_DEADLINE: Duration = Duration::from_secs(60);

/// A computed batch on its way out.
pub(crate) struct Finished {
    pub lease: Lease,
    pub result: BatchResult,
}

/// The results object of a batch: one [`QueryResult`] per leased input, in input order.
/// `outcomes[i]` belongs to `lease.inputs[i]`; a missing outcome is an error result.
pub fn assemble(
    lease: &Lease,
    worker: &str,
    outcomes: Vec<QueryOutcome>,
    compute_ms: u64,
) -> BatchResult {
    let mut outcomes = outcomes.into_iter();
    let mut results: Vec<QueryResult> = lease
        .inputs
        .iter()
        .map(|input| {
            let (top, error) = match outcomes.next() {
                Some(Ok(top)) => (top, None),
                Some(Err(reason)) => (Vec::new(), Some(reason)),
                None => (Vec::new(), Some("no result computed".to_string())),
            };
            QueryResult {
                index: input.index,
                input: input.name.clone(),
                top,
                error,
            }
        })
        .collect();
    results.sort_by_key(|r| r.index);
    BatchResult {
        job_id: lease.job_id,
        batch_id: lease.batch_id.clone(),
        model: lease.model.clone(),
        worker: worker.to_string(),
        compute_ms,
        results,
    }
}

/// Queries of a batch whose result is an error.
pub fn failed_queries(result: &BatchResult) -> u32 {
    result.results.iter().filter(|r| r.error.is_some()).count() as u32
}

/// The reporter: publishes finished batches until every compute slot has ended and the
/// queue is empty.
pub(crate) async fn report_loop(shared: Arc<Shared>, mut finished: mpsc::Receiver<Finished>) {
    while let Some(batch) = finished.recv().await {
        publish(&shared, batch).await;
    }
}

/// Reports the completion with the results object in it (the coordinator stores the object
/// and commits it with the completion). If no coordinator takes it, the lease is given back
/// so that another worker (or this one, later) runs the batch again.
async fn publish(shared: &Shared, finished: Finished) {
    let Finished { lease, result } = finished;
    let failed = failed_queries(&result);
    let queries = result.results.len() as u64;
    let compute_ms = result.compute_ms;
    let completion = Completion {
        lease_id: lease.lease_id,
        results: Some(result),
        result: None,
        failed,
        compute_ms,
    };
    match complete(shared, &lease.batch_id, &completion).await {
        Ok(ack) => {
            shared.holding.remove(lease.lease_id);
            shared
                .stats
                .record_completion(queries, failed as u64, ack.accepted);
            tracing::info!(
                batch = %lease.batch_id,
                queries,
                failed,
                compute_ms,
                accepted = ack.accepted,
                "batch completed"
            );
        }
        Err(e) => {
            // Left alone, the lease would stay ours for as long as this worker heartbeats: up
            // to the batch's hard deadline (minutes). Giving it back lets the batch run again
            // at once; whoever runs it next reports its results.
            tracing::error!(batch = %lease.batch_id, error = %e, "cannot report the batch's completion; giving the batch back");
            release(shared, &lease).await;
        }
    }
}

/// `POST /v1/batches/{id}/complete`, one request id until a coordinator answers.
async fn complete(
    shared: &Shared,
    batch_id: &str,
    completion: &Completion,
) -> Result<CompletionAck, WorkerError> {
    let path = format!("/v1/batches/{}/complete", encode_segment(batch_id));
    let request_id = idunno_api::client::new_request_id();
    let (_, body) = call_until_answered(
        &shared.client,
        Method::POST,
        &path,
        completion,
        &request_id,
        None,
        Some(COMPLETION_DEADLINE),
    )
    .await
    .map_err(|e| WorkerError::coordinator(format!("POST {path}"), e))?;
    serde_json::from_slice(&body).map_err(|e| {
        WorkerError::coordinator(
            format!("POST {path}"),
            idunno_api::ClientError::Protocol(format!("bad answer: {e}")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_api::worker::LeasedInput;

    fn lease(names: &[&str]) -> Lease {
        Lease {
            lease_id: 9,
            batch_id: "4-2".into(),
            job_id: 4,
            model: "r18".into(),
            arch: idunno_models::Arch::ResNet18,
            weights: "models/r18.safetensors".into(),
            input_size: 224,
            inputs: names
                .iter()
                .enumerate()
                .map(|(i, n)| LeasedInput {
                    index: 16 + i as u64,
                    name: n.to_string(),
                    hash: None,
                    size: 0,
                    replicas: vec![],
                })
                .collect(),
            attempt: 1,
            deadline_ms: 0,
            cost_ms: 0,
            batch_size: 0,
        }
    }

    fn class(index: usize, p: f32) -> Class {
        Class {
            index,
            label: idunno_models::imagenet_label(index).to_string(),
            probability: p,
        }
    }

    #[test]
    fn results_follow_input_order_with_error_results_in_place() {
        let lease = lease(&["a.png", "b.txt", "c.jpg", "gone.png"]);
        let outcomes = vec![
            Ok(vec![class(281, 0.7), class(282, 0.2)]),
            Err("cannot decode as an image: unknown format".to_string()),
            Ok(vec![class(967, 0.9)]),
            Err("input gone.png: no such file in SDFS".to_string()),
        ];
        let r = assemble(&lease, "w1", outcomes, 42);
        assert_eq!((r.job_id, r.batch_id.as_str()), (4, "4-2"));
        assert_eq!(
            (r.model.as_str(), r.worker.as_str(), r.compute_ms),
            ("r18", "w1", 42)
        );
        let names: Vec<&str> = r.results.iter().map(|q| q.input.as_str()).collect();
        assert_eq!(names, ["a.png", "b.txt", "c.jpg", "gone.png"]);
        let indexes: Vec<u64> = r.results.iter().map(|q| q.index).collect();
        assert_eq!(indexes, [16, 17, 18, 19]);
        assert_eq!(r.results[0].top[0].label, "tabby");
        assert!(r.results[0].error.is_none());
        assert!(r.results[1].top.is_empty());
        assert!(r.results[1].error.as_deref().unwrap().contains("decode"));
        assert_eq!(r.results[2].top[0].index, 967);
        assert!(r.results[3].error.is_some());
        assert_eq!(failed_queries(&r), 2);

        // The JSON object: errors only where there is one.
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["results"][0].get("error").is_none());
        assert_eq!(json["results"][1]["top"], serde_json::json!([]));
    }

    #[test]
    fn a_missing_outcome_is_an_error_not_a_shift() {
        let lease = lease(&["a", "b"]);
        let r = assemble(&lease, "w", vec![Ok(vec![class(1, 1.0)])], 0);
        assert_eq!(r.results.len(), 2);
        assert!(r.results[0].error.is_none());
        assert!(r.results[1].error.is_some());
    }
}
