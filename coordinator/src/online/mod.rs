//! Online inference on the leader: single requests (`POST /v2/models/{m}/infer`) queued per
//! model, cut into batches (dynamic batching: a batch goes when it holds the model's maximum
//! batch size, or when its oldest request has waited the model's maximum queue delay) and
//! handed to workers in lease answers, beside the jobs' batches and under the same fair-time
//! scheduler (online traffic is one more client with a weight of its own; see
//! [`crate::leader::scheduler`]).
//!
//! None of this goes through the Raft log: a request lives in the leader's memory from its
//! arrival to its answer, so online throughput is the workers', not the commit rate's. The
//! failure semantics follow from that:
//!
//! * a worker that goes silent for a lease timeout (or a batch that outlives its hard
//!   deadline) has its batch put back at the head of its model's queue and run elsewhere,
//!   as long as each request's deadline allows; a late answer of the first worker is
//!   dropped, since the batch id it answers for is gone — a request is answered once, with
//!   the outputs of its own inputs;
//! * a leader that loses its leadership (or crashes) loses its queue: the requests it held
//!   are answered 503 (or their connections break) and the client retries, as it would any
//!   idempotent call — inference has no side effect;
//! * a request whose deadline passes is answered 503 and dropped from the queue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use idunno_api::online::{OnlineInput, OnlineOutput};
use tokio::sync::{oneshot, Notify};

/// Requests a leader holds at most (queued and running); more are refused with 503.
pub const MAX_PENDING: usize = 4096;

/// How long after its lease call ended a worker holding an online batch may still be on its
/// way back for another (it asks again as soon as a compute slot starts the one it got, which
/// on a worker with a free slot takes a few milliseconds): until then it is not occupied.
pub const RETURN_GRACE: Duration = Duration::from_millis(50);

/// Why an online request got no outputs: no answer can come now (deadline, leadership lost,
/// a full queue) — a 503. (An input the worker could not use is in its output instead.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineFailure(pub String);

/// What a request gets back: one output per input.
pub type OnlineReply = Result<Vec<OnlineOutput>, OnlineFailure>;

/// A request waiting for its outputs.
struct Pending {
    inputs: Vec<OnlineInput>,
    /// Top classes the request's outputs name at most.
    top_k: u32,
    reply: oneshot::Sender<OnlineReply>,
    enqueued: Instant,
    deadline: Instant,
}

impl Pending {
    fn answer(self, reply: OnlineReply) {
        // The client may have gone away: nothing to do then.
        let _ = self.reply.send(reply);
    }
}

/// A batch a worker runs.
struct InFlight {
    worker: String,
    /// The lease call's request id: a worker that lost the answer and asks again with the
    /// same id gets the same batch.
    request: String,
    model: String,
    requests: Vec<Pending>,
    leased: Instant,
}

#[derive(Default)]
struct Inner {
    queues: BTreeMap<String, VecDeque<Pending>>,
    in_flight: HashMap<String, InFlight>,
    next_batch: u64,
    /// Images handed out (less those put back): what the scheduler charges online traffic.
    served: u64,
    /// Workers with a lease call open, or whose last one ended within [`RETURN_GRACE`].
    asking: HashMap<String, Asking>,
}

/// A worker's lease calls on this leader.
#[derive(Debug, Clone, Copy)]
struct Asking {
    open: usize,
    /// When the last one ended (`None` while the first is open).
    ended: Option<Instant>,
}

impl Inner {
    fn pending(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum::<usize>()
            + self
                .in_flight
                .values()
                .map(|b| b.requests.len())
                .sum::<usize>()
    }
}

/// How a model's requests are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Images per batch at most (a single request larger than this runs alone).
    pub max_batch: u32,
    /// How long the oldest request may wait for others to join it.
    pub max_delay: Duration,
}

/// The leader's online requests, queued and running.
pub struct Online {
    inner: Mutex<Inner>,
    /// Wakes lease calls when a request arrives.
    pub wake: Notify,
    /// Random, per coordinator process: batch ids of two leaders never coincide, so a late
    /// answer to another leader's batch can never be taken for one of this leader's.
    epoch: u32,
}

impl Default for Online {
    fn default() -> Online {
        Online {
            inner: Mutex::default(),
            wake: Notify::new(),
            epoch: rand::random(),
        }
    }
}

/// A batch taken for a worker.
#[derive(Debug)]
pub struct TakenBatch {
    pub batch_id: String,
    pub inputs: Vec<OnlineInput>,
    /// Top classes the batch's outputs must name (the most any of its requests wants).
    pub top_k: u32,
    /// How long each of its requests waited in the queue.
    pub waited: Vec<Duration>,
}

/// An open lease call (see [`Online::asking`]). Dropping it closes the call; if requests are
/// waiting then, the other lease calls look again: the worker may have left with the batch
/// that leaves every worker with that model occupied.
pub struct AskingGuard<'a> {
    online: &'a Online,
    worker: String,
}

impl Drop for AskingGuard<'_> {
    fn drop(&mut self) {
        let waiting = {
            let mut inner = self.online.lock();
            if let Some(a) = inner.asking.get_mut(&self.worker) {
                a.open = a.open.saturating_sub(1);
                a.ended = Some(Instant::now());
            }
            !inner.queues.is_empty()
        };
        if waiting {
            self.online.wake.notify_waiters();
        }
    }
}

impl Online {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a request of `inputs` for `model`, whose outputs name their `top_k` classes;
    /// the receiver gets its outputs. Refused (`Err`) when the leader holds [`MAX_PENDING`]
    /// requests already.
    pub fn submit(
        &self,
        model: &str,
        inputs: Vec<OnlineInput>,
        top_k: u32,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<OnlineReply>, OnlineFailure> {
        let (reply, rx) = oneshot::channel();
        {
            let mut inner = self.lock();
            if inner.pending() >= MAX_PENDING {
                return Err(OnlineFailure(format!(
                    "{MAX_PENDING} online requests are waiting already; retry later"
                )));
            }
            inner
                .queues
                .entry(model.to_string())
                .or_default()
                .push_back(Pending {
                    inputs,
                    top_k,
                    reply,
                    enqueued: Instant::now(),
                    deadline,
                });
        }
        self.wake.notify_waiters();
        Ok(rx)
    }

    /// Models with requests waiting, with the arrival of each one's oldest.
    pub fn waiting(&self) -> Vec<(String, Instant)> {
        self.lock()
            .queues
            .iter()
            .filter_map(|(m, q)| Some((m.clone(), q.front()?.enqueued)))
            .collect()
    }

    /// Whether `model`'s queue makes a batch now, and otherwise when it will (its oldest
    /// request's delay runs out).
    pub fn due(
        &self,
        model: &str,
        batching: Batching,
        now: Instant,
    ) -> Result<(), Option<Instant>> {
        let inner = self.lock();
        let Some(queue) = inner.queues.get(model).filter(|q| !q.is_empty()) else {
            return Err(None);
        };
        let images: usize = queue.iter().map(|p| p.inputs.len()).sum();
        let oldest = queue.front().map_or(now, |p| p.enqueued);
        if images >= batching.max_batch as usize || now >= oldest + batching.max_delay {
            Ok(())
        } else {
            Err(Some(oldest + batching.max_delay))
        }
    }

    /// The batch an earlier lease call of `worker` with this request id was given, if it is
    /// still running (the worker lost the answer and asks again).
    pub fn given(&self, worker: &str, request: &str) -> Option<(String, TakenBatch)> {
        let inner = self.lock();
        let (id, b) = inner
            .in_flight
            .iter()
            .find(|(_, b)| b.worker == worker && b.request == request)?;
        Some((
            b.model.clone(),
            TakenBatch {
                batch_id: id.clone(),
                inputs: b
                    .requests
                    .iter()
                    .flat_map(|p| p.inputs.iter().cloned())
                    .collect(),
                top_k: b.requests.iter().map(|p| p.top_k).max().unwrap_or(0),
                waited: Vec::new(),
            },
        ))
    }

    /// Takes the next batch of `model` for `worker` (answering lease call `request`): whole
    /// requests from the head of the queue, as many as fit in `max_batch` images (at least
    /// one).
    pub fn take(
        &self,
        model: &str,
        max_batch: u32,
        worker: &str,
        request: &str,
    ) -> Option<TakenBatch> {
        let mut inner = self.lock();
        let queue = inner.queues.get_mut(model)?;
        let mut requests = Vec::new();
        let mut images = 0usize;
        while let Some(next) = queue.front() {
            let n = next.inputs.len();
            if !requests.is_empty() && images + n > max_batch as usize {
                break;
            }
            images += n;
            requests.extend(queue.pop_front());
        }
        if queue.is_empty() {
            inner.queues.remove(model);
        }
        if requests.is_empty() {
            return None;
        }
        inner.next_batch += 1;
        let batch_id = format!("online-{:08x}-{}", self.epoch, inner.next_batch);
        let inputs = requests
            .iter()
            .flat_map(|p| p.inputs.iter().cloned())
            .collect();
        let top_k = requests.iter().map(|p| p.top_k).max().unwrap_or(0);
        let waited = requests.iter().map(|p| p.enqueued.elapsed()).collect();
        inner.served += images as u64;
        inner.in_flight.insert(
            batch_id.clone(),
            InFlight {
                worker: worker.to_string(),
                request: request.to_string(),
                model: model.to_string(),
                requests,
                leased: Instant::now(),
            },
        );
        Some(TakenBatch {
            batch_id,
            inputs,
            top_k,
            waited,
        })
    }

    /// The workers running online batches now.
    pub fn running_workers(&self) -> Vec<String> {
        self.lock()
            .in_flight
            .values()
            .map(|b| b.worker.clone())
            .collect()
    }

    /// Marks a lease call of `worker` open until the guard drops. A worker asking can take
    /// an online batch now, so it is not occupied (see [`Online::all_occupied`]).
    pub fn asking(&self, worker: &str) -> AskingGuard<'_> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner
            .asking
            .retain(|_, a| a.open > 0 || a.ended.is_some_and(|t| now < t + RETURN_GRACE));
        inner
            .asking
            .entry(worker.to_string())
            .or_insert(Asking {
                open: 0,
                ended: None,
            })
            .open += 1;
        AskingGuard {
            online: self,
            worker: worker.to_string(),
        }
    }

    /// Whether every one of `workers` is occupied at `now`: has an online batch in hand, no
    /// lease call open, and its last one ended at least [`RETURN_GRACE`] ago (it did not come
    /// back for more: its compute slots are full). `Err(Some(at))`: not yet, but they may be
    /// at `at` (one is still within its grace); `Err(None)`: one of them is free or asking.
    pub fn all_occupied(&self, workers: &[String], now: Instant) -> Result<(), Option<Instant>> {
        let inner = self.lock();
        let mut recheck: Option<Instant> = None;
        for worker in workers {
            if !inner.in_flight.values().any(|b| &b.worker == worker) {
                return Err(None);
            }
            match inner.asking.get(worker) {
                Some(a) if a.open > 0 => return Err(None),
                Some(Asking {
                    ended: Some(ended), ..
                }) if now < *ended + RETURN_GRACE => {
                    let at = *ended + RETURN_GRACE;
                    recheck = Some(recheck.map_or(at, |r| r.min(at)));
                }
                _ => {}
            }
        }
        recheck.map_or(Ok(()), |at| Err(Some(at)))
    }

    /// Images handed out so far, less those put back (the scheduler's charge).
    pub fn served(&self) -> u64 {
        self.lock().served
    }

    /// The outputs of batch `batch_id` from `worker`: each request gets its own. `false` if
    /// the batch is not running here (answered already, put back, or of an earlier leader):
    /// the outputs are dropped.
    pub fn complete(
        &self,
        batch_id: &str,
        worker: &str,
        outputs: Vec<OnlineOutput>,
    ) -> Result<bool, String> {
        let batch = {
            let mut inner = self.lock();
            match inner.in_flight.get(batch_id) {
                Some(b) if b.worker == worker => {}
                _ => return Ok(false),
            }
            let images: usize = inner.in_flight[batch_id]
                .requests
                .iter()
                .map(|p| p.inputs.len())
                .sum();
            if outputs.len() != images {
                return Err(format!(
                    "batch {batch_id} has {images} inputs but {} outputs came",
                    outputs.len()
                ));
            }
            inner.in_flight.remove(batch_id)
        };
        let Some(batch) = batch else { return Ok(false) };
        let mut outputs = outputs.into_iter();
        for request in batch.requests {
            let mine: Vec<OnlineOutput> = outputs.by_ref().take(request.inputs.len()).collect();
            request.answer(Ok(mine));
        }
        Ok(true)
    }

    /// Puts back the batches whose worker `is_gone` (silent, deregistered) or that have run
    /// longer than `max_run`, at the head of their queues; requests past their deadline are
    /// answered instead. Answers requests queued past their deadline too. Returns the
    /// batches put back.
    pub fn reclaim(
        &self,
        is_gone: impl Fn(&str) -> bool,
        max_run: Duration,
        now: Instant,
    ) -> usize {
        let mut late = Vec::new();
        let reclaimed = {
            let mut inner = self.lock();
            let lost: Vec<String> = inner
                .in_flight
                .iter()
                .filter(|(_, b)| {
                    is_gone(&b.worker) || now.saturating_duration_since(b.leased) > max_run
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &lost {
                let Some(batch) = inner.in_flight.remove(id) else {
                    continue;
                };
                let images: usize = batch.requests.iter().map(|p| p.inputs.len()).sum();
                inner.served = inner.served.saturating_sub(images as u64);
                let queue = inner.queues.entry(batch.model.clone()).or_default();
                for request in batch.requests.into_iter().rev() {
                    queue.push_front(request);
                }
            }
            for queue in inner.queues.values_mut() {
                let (keep, gone): (VecDeque<Pending>, VecDeque<Pending>) =
                    queue.drain(..).partition(|p| p.deadline > now);
                *queue = keep;
                late.extend(gone);
            }
            inner.queues.retain(|_, q| !q.is_empty());
            lost.len()
        };
        for request in late {
            request.answer(Err(OnlineFailure(
                "the request's deadline passed before a worker answered it".into(),
            )));
        }
        if reclaimed > 0 {
            self.wake.notify_waiters();
        }
        reclaimed
    }

    /// Answers every request held with `reason` (this node stopped leading).
    pub fn fail_all(&self, reason: &str) {
        let requests: Vec<Pending> = {
            let mut inner = self.lock();
            inner.served = 0;
            let queued = std::mem::take(&mut inner.queues).into_values().flatten();
            let running: Vec<Pending> = std::mem::take(&mut inner.in_flight)
                .into_values()
                .flat_map(|b| b.requests)
                .collect();
            queued.chain(running).collect()
        };
        for request in requests {
            request.answer(Err(OnlineFailure(reason.to_string())));
        }
    }

    /// Requests queued (not yet handed out), per model.
    pub fn queued(&self) -> Vec<(String, usize)> {
        self.lock()
            .queues
            .iter()
            .map(|(m, q)| (m.clone(), q.len()))
            .collect()
    }

    /// Whether anything is held (queued or running).
    pub fn is_empty(&self) -> bool {
        self.lock().pending() == 0
    }
}

#[cfg(test)]
mod tests {
    use idunno_api::online::Base64;

    use super::*;

    fn image(tag: u8) -> OnlineInput {
        OnlineInput::Image {
            data: Base64(vec![tag]),
        }
    }

    fn output(tag: u8) -> OnlineOutput {
        OnlineOutput {
            logits: Some(Base64(vec![tag])),
            top: Vec::new(),
            error: None,
            bad_input: false,
        }
    }

    fn later(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    const BATCHING: Batching = Batching {
        max_batch: 3,
        max_delay: Duration::from_millis(50),
    };

    #[test]
    fn a_batch_goes_when_full_or_when_its_oldest_request_has_waited() {
        let online = Online::default();
        let now = Instant::now();
        assert_eq!(online.due("m", BATCHING, now), Err(None));
        let _a = online
            .submit("m", vec![image(1)], 0, later(10_000))
            .unwrap();
        let when = online.due("m", BATCHING, now).unwrap_err().unwrap();
        assert!(when > now && when <= later(60));
        assert!(online.due("m", BATCHING, when).is_ok());
        let _b = online
            .submit("m", vec![image(2), image(3)], 0, later(10_000))
            .unwrap();
        assert!(
            online.due("m", BATCHING, now).is_ok(),
            "3 images fill a batch"
        );
    }

    #[tokio::test]
    async fn requests_are_batched_whole_and_each_gets_its_own_outputs() {
        let online = Online::default();
        let a = online
            .submit("m", vec![image(1)], 0, later(10_000))
            .unwrap();
        let b = online
            .submit("m", vec![image(2), image(3)], 0, later(10_000))
            .unwrap();
        let c = online
            .submit("m", vec![image(4), image(5)], 0, later(10_000))
            .unwrap();
        let first = online.take("m", 3, "w1", "r").unwrap();
        assert_eq!(first.inputs, vec![image(1), image(2), image(3)]);
        assert_eq!(online.served(), 3);
        let second = online.take("m", 3, "w2", "r").unwrap();
        assert_eq!(second.inputs.len(), 2);
        assert!(online.take("m", 3, "w1", "r").is_none());
        // A wrong count is refused; another worker's answer is dropped.
        assert!(online
            .complete(&first.batch_id, "w1", vec![output(1)])
            .is_err());
        assert!(!online
            .complete(&first.batch_id, "w2", vec![output(1); 3])
            .unwrap());
        let outs = vec![output(1), output(2), output(3)];
        assert!(online.complete(&first.batch_id, "w1", outs).unwrap());
        assert_eq!(a.await.unwrap().unwrap(), vec![output(1)]);
        assert_eq!(b.await.unwrap().unwrap(), vec![output(2), output(3)]);
        // Answered once: a second completion of the same batch is dropped.
        assert!(!online
            .complete(&first.batch_id, "w1", vec![output(9); 3])
            .unwrap());
        assert!(online
            .complete(&second.batch_id, "w2", vec![output(4), output(5)])
            .unwrap());
        assert_eq!(c.await.unwrap().unwrap(), vec![output(4), output(5)]);
        assert!(online.is_empty());
    }

    #[test]
    fn a_worker_is_occupied_once_it_holds_a_batch_and_did_not_come_back_for_more() {
        let online = Online::default();
        let w1 = vec!["w1".to_string()];
        let _replies: Vec<_> = (1..=2)
            .map(|tag| {
                online
                    .submit("m", vec![image(tag)], 0, later(10_000))
                    .unwrap()
            })
            .collect();
        // Nothing in hand: free.
        assert_eq!(online.all_occupied(&w1, Instant::now()), Err(None));
        let call = online.asking("w1");
        online.take("m", 1, "w1", "r1").unwrap();
        // A batch in hand, but still in the call that took it: it may take the next too.
        assert_eq!(online.all_occupied(&w1, Instant::now()), Err(None));
        let leaving = Instant::now();
        drop(call);
        let left = Instant::now();
        // Just left: it may be on its way back (a free compute slot) until the grace ends.
        // (Asked as of `leaving`, which no stall of this thread can put past the grace.)
        match online.all_occupied(&w1, leaving) {
            Err(Some(at)) => assert!(at >= leaving + RETURN_GRACE && at <= left + RETURN_GRACE),
            other => panic!("within the grace: {other:?}"),
        }
        // Back for more within the grace: asking again, so not occupied.
        let again = online.asking("w1");
        assert_eq!(online.all_occupied(&w1, leaving), Err(None));
        drop(again);
        // Did not come back: occupied.
        let after = Instant::now() + RETURN_GRACE;
        assert_eq!(online.all_occupied(&w1, after), Ok(()));
        // Every worker must be: one free worker beside it is enough.
        let both = vec!["w1".to_string(), "w2".to_string()];
        assert_eq!(online.all_occupied(&both, after), Err(None));
    }

    #[test]
    fn a_lease_call_ending_wakes_the_others_only_while_requests_wait() {
        use futures::FutureExt;
        let online = Online::default();
        let _a = online
            .submit("m", vec![image(1)], 0, later(10_000))
            .unwrap();
        let _b = online
            .submit("m", vec![image(2)], 0, later(10_000))
            .unwrap();
        // Another worker's call waits (as `lease` waits) while w1's call leaves with the next
        // request: whether the waiting call was woken.
        let leave_with_next = |request: &str| {
            let call = online.asking("w1");
            online.take("m", 1, "w1", request).unwrap();
            let waiting = online.wake.notified();
            futures::pin_mut!(waiting);
            waiting.as_mut().enable();
            drop(call);
            waiting.now_or_never().is_some()
        };
        assert!(leave_with_next("r1"), "woken: the second request waits");
        assert!(!leave_with_next("r2"), "nothing waits");
    }

    #[tokio::test]
    async fn a_lost_workers_batch_runs_again_and_its_late_answer_is_dropped() {
        let online = Online::default();
        let a = online
            .submit("m", vec![image(1)], 0, later(10_000))
            .unwrap();
        let first = online.take("m", 4, "dead", "r").unwrap();
        assert_eq!(
            online.reclaim(|w| w == "dead", Duration::from_secs(60), Instant::now()),
            1
        );
        assert_eq!(online.served(), 0);
        let again = online.take("m", 4, "alive", "r").unwrap();
        assert_ne!(again.batch_id, first.batch_id);
        assert_eq!(again.inputs, vec![image(1)]);
        assert!(!online
            .complete(&first.batch_id, "dead", vec![output(7)])
            .unwrap());
        assert!(online
            .complete(&again.batch_id, "alive", vec![output(1)])
            .unwrap());
        assert_eq!(a.await.unwrap().unwrap(), vec![output(1)]);
    }

    #[tokio::test]
    async fn deadlines_and_lost_leadership_answer_with_503() {
        let online = Online::default();
        let late = online
            .submit("m", vec![image(1)], 0, Instant::now())
            .unwrap();
        let kept = online
            .submit("m", vec![image(2)], 0, later(10_000))
            .unwrap();
        online.reclaim(|_| false, Duration::from_secs(60), later(1));
        assert!(matches!(late.await.unwrap(), Err(OnlineFailure(_))));
        online.take("m", 4, "w", "r").unwrap();
        online.fail_all("no longer the leader");
        assert!(matches!(kept.await.unwrap(), Err(OnlineFailure(_))));
        assert!(online.is_empty());
    }

    #[test]
    fn two_leaders_never_name_a_batch_alike() {
        let (a, b) = (Online::default(), Online::default());
        let _ra = a.submit("m", vec![image(1)], 0, later(10_000)).unwrap();
        let _rb = b.submit("m", vec![image(1)], 0, later(10_000)).unwrap();
        let (x, y) = (
            a.take("m", 1, "w", "r").unwrap(),
            b.take("m", 1, "w", "r").unwrap(),
        );
        assert_ne!(x.batch_id, y.batch_id);
        assert!(!b.complete(&x.batch_id, "w", vec![output(1)]).unwrap());
    }
}
