//! The hand-off between prefetch and compute: leased batches that are not started — being
//! prepared (inputs fetched and decoded) or ready — and the set of every lease the worker
//! holds.
//!
//! The prefetch task keeps at most one batch here (see [`crate::prefetch`]); compute slots
//! take ready batches in order. A batch can be taken back out (the leader revoked it) as long
//! as no compute slot has started it, whether or not its preparation has finished: the
//! preparation is then aborted. The prefetch task watches [`PreparedQueue::taken`] to know
//! when to ask for the next batch. [`Holding`] lists every lease from the moment its answer
//! arrives until its completion is acknowledged or it is given back: heartbeats send it, so
//! the leader can reclaim a lease whose answer never arrived.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use std::time::Instant;

use idunno_api::online::OnlineLease;
use idunno_api::worker::{Lease, LeaseRef};
use image::DynamicImage;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use crate::stop::stopped;

/// A leased batch whose inputs are fetched and decoded: ready for the network.
pub(crate) struct PreparedBatch {
    pub lease: Lease,
    /// One entry per `lease.inputs`, same order: the image, or why there is none.
    pub images: Vec<Result<DynamicImage, String>>,
    /// When the lease arrived (how long a batch waited is a tracing figure).
    pub leased_at: Instant,
}

/// An online batch whose inputs are decoded: ready for the network, ahead of any batch.
pub(crate) struct OnlineBatch {
    pub lease: OnlineLease,
    /// One entry per input of the lease, same order: the image, or why there is none.
    pub images: Vec<Result<OnlineImage, String>>,
}

/// One input of an online batch, ready for the model.
pub(crate) enum OnlineImage {
    /// Decoded; the model preprocesses it as a job's.
    Decoded(DynamicImage),
    /// Already preprocessed: a `[3, S, S]` tensor's values.
    Tensor(Vec<f32>),
}

/// What a compute slot takes next.
pub(crate) enum Work {
    Online(OnlineBatch),
    Batch(PreparedBatch),
}

impl Work {
    /// The images one forward pass of it carries (what lanes admit): an online batch's all, a
    /// job's batch its job's batch size (a batch may hold several passes, run one by one).
    pub fn pass_images(&self) -> usize {
        match self {
            Work::Online(batch) => batch.images.len(),
            Work::Batch(batch) => pass_size(&batch.lease),
        }
    }
}

/// Images per forward pass of a leased batch: its job's batch size, at most its inputs (a
/// lease from a coordinator that does not say: all of them at once).
pub fn pass_size(lease: &Lease) -> usize {
    match lease.batch_size as usize {
        0 => lease.inputs.len(),
        size => size.min(lease.inputs.len()),
    }
    .max(1)
}

/// A batch in the queue.
enum Entry {
    /// Its inputs are being fetched and decoded by this task.
    Preparing {
        lease: Lease,
        task: AbortHandle,
    },
    Ready(PreparedBatch),
}

impl Entry {
    fn lease(&self) -> &Lease {
        match self {
            Entry::Preparing { lease, .. } => lease,
            Entry::Ready(batch) => &batch.lease,
        }
    }
}

/// Unstarted batches, oldest first.
pub(crate) struct PreparedQueue {
    entries: Mutex<VecDeque<Entry>>,
    /// Online batches ready to run; they go before `entries`.
    online: Mutex<VecDeque<OnlineBatch>>,
    /// Online batches received and not yet taken by a compute slot (decoding, or in
    /// `online`): the prefetch loop asks for more only when this is zero.
    online_pending: AtomicUsize,
    /// Wakes compute slots waiting for a ready batch (or for the queue to close).
    ready: Notify,
    /// Counts the batches compute slots have taken.
    taken: watch::Sender<u64>,
    closed: Mutex<bool>,
}

impl Default for PreparedQueue {
    fn default() -> Self {
        PreparedQueue {
            entries: Mutex::new(VecDeque::new()),
            online: Mutex::new(VecDeque::new()),
            online_pending: AtomicUsize::new(0),
            ready: Notify::new(),
            taken: watch::channel(0).0,
            closed: Mutex::new(false),
        }
    }
}

impl PreparedQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a batch and starts its preparation (`start` spawns the task, which calls
    /// [`PreparedQueue::ready`] when done): under the queue's lock, so the task cannot report
    /// before its entry exists.
    pub fn preparing(&self, lease: Lease, start: impl FnOnce() -> AbortHandle) {
        let mut entries = self.lock();
        let task = start();
        entries.push_back(Entry::Preparing { lease, task });
    }

    /// The batch of `batch.lease` is ready; `false` if it was taken back out meanwhile.
    pub fn ready(&self, batch: PreparedBatch) -> bool {
        let mut entries = self.lock();
        let id = batch.lease.lease_id;
        let Some(slot) = entries.iter_mut().find(|e| e.lease().lease_id == id) else {
            return false;
        };
        *slot = Entry::Ready(batch);
        drop(entries);
        self.ready.notify_one();
        true
    }

    /// An online batch was received (its decoding starts): it counts as waiting until a
    /// compute slot takes it.
    pub fn online_received(&self) {
        self.online_pending.fetch_add(1, Ordering::SeqCst);
    }

    /// Online batches received and not yet started.
    pub fn online_pending(&self) -> usize {
        self.online_pending.load(Ordering::SeqCst)
    }

    /// An online batch is ready: it runs before any prepared batch.
    pub fn push_online(&self, batch: OnlineBatch) {
        self.online
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(batch);
        self.ready.notify_one();
    }

    /// The leases waiting here, as the lease call lists them.
    pub fn prepared(&self) -> Vec<LeaseRef> {
        self.lock()
            .iter()
            .map(|e| LeaseRef {
                batch_id: e.lease().batch_id.clone(),
                lease_id: e.lease().lease_id,
            })
            .collect()
    }

    /// Takes lease `lease_id` back out, unless a compute slot took it already (its
    /// preparation, if running, is aborted).
    pub fn remove(&self, lease_id: u64) -> Option<Lease> {
        let mut entries = self.lock();
        let at = entries
            .iter()
            .position(|e| e.lease().lease_id == lease_id)?;
        entries.remove(at).map(into_lease)
    }

    /// The next ready batch (online batches first), waiting for one; `None` once the worker
    /// stops or the queue is closed.
    pub async fn take(&self, stop: &mut watch::Receiver<bool>) -> Option<Work> {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if *stop.borrow() || *self.closed.lock().unwrap_or_else(|p| p.into_inner()) {
                return None;
            }
            let online = self
                .online
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
            if let Some(batch) = online {
                self.online_pending.fetch_sub(1, Ordering::SeqCst);
                self.taken.send_modify(|n| *n += 1);
                self.ready.notify_one();
                return Some(Work::Online(batch));
            }
            {
                let mut entries = self.lock();
                if matches!(entries.front(), Some(Entry::Ready(_))) {
                    if let Some(Entry::Ready(batch)) = entries.pop_front() {
                        drop(entries);
                        self.taken.send_modify(|n| *n += 1);
                        // Another slot may be waiting and there may be more.
                        self.ready.notify_one();
                        return Some(Work::Batch(batch));
                    }
                }
            }
            tokio::select! {
                _ = &mut ready => {}
                _ = stopped(stop) => return None,
            }
        }
    }

    /// A receiver that changes whenever a compute slot takes a batch.
    pub fn taken(&self) -> watch::Receiver<u64> {
        self.taken.subscribe()
    }

    /// No more batches will be taken: wakes every waiting slot, aborts preparations, and
    /// hands back the leases that were left (to give back).
    pub fn close(&self) -> Vec<Lease> {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.ready.notify_waiters();
        self.lock().drain(..).map(into_lease).collect()
    }
}

fn into_lease(entry: Entry) -> Lease {
    match entry {
        Entry::Preparing { lease, task } => {
            task.abort();
            lease
        }
        Entry::Ready(batch) => batch.lease,
    }
}

/// Every lease the worker holds: received, and not yet completed or given back.
#[derive(Default)]
pub(crate) struct Holding(Mutex<HashSet<u64>>);

impl Holding {
    pub fn add(&self, lease_id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease_id);
    }

    pub fn remove(&self, lease_id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&lease_id);
    }

    /// The lease ids, sorted.
    pub fn list(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }
}
