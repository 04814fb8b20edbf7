//! The worker's Prometheus metrics (`prometheus-client`), served by [`crate::listener`]:
//! forward-pass time per model and batch size, decode time, batches and images by kind (job
//! or online), the share of its life the compute slots were busy, and the models loaded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idunno_server::metrics::{
    batch_sizes, register, seconds, Counter, EncodeLabelSet, Family, FloatGauge, Gauge,
    HistogramFamily, HttpMetrics, Registry,
};

/// A model and a batch size.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    pub model: String,
    pub batch_size: String,
}

/// A model and what the batch was for (`job` or `online`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub model: String,
    pub kind: String,
}

/// Every metric of a worker.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub registry: Registry,
    pub http: HttpMetrics,
    forward: HistogramFamily<BatchLabels>,
    decode: HistogramFamily<KindLabels>,
    batch_size: HistogramFamily<KindLabels>,
    batches: Family<KindLabels, Counter>,
    images: Family<KindLabels, Counter>,
    busy: FloatGauge,
    pub models_loaded: Gauge,
    busy_nanos: AtomicU64,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let http = HttpMetrics::register(&mut r);
        Metrics {
            http,
            forward: register(
                &mut r,
                "idunno_worker_forward_seconds",
                "preprocessing and forward pass of one pass (a job batch may hold several), by model and batch size",
                Family::new_with_constructor(seconds),
            ),
            decode: register(
                &mut r,
                "idunno_worker_decode_seconds",
                "decoding a batch's images, by model and kind",
                Family::new_with_constructor(seconds),
            ),
            batch_size: register(
                &mut r,
                "idunno_worker_batch_size",
                "images per forward pass, by model and kind",
                Family::new_with_constructor(batch_sizes),
            ),
            batches: register(
                &mut r,
                "idunno_worker_batches",
                "forward passes run, by model and kind",
                Family::default(),
            ),
            images: register(
                &mut r,
                "idunno_worker_images",
                "images run, by model and kind",
                Family::default(),
            ),
            busy: register(
                &mut r,
                "idunno_worker_busy_ratio",
                "share of the worker's life its compute pool spent on batches",
                FloatGauge::default(),
            ),
            models_loaded: register(
                &mut r,
                "idunno_worker_models_loaded",
                "models loaded now",
                Gauge::default(),
            ),
            busy_nanos: AtomicU64::new(0),
            started: Instant::now(),
            registry: r,
        }
    }
}

impl Metrics {
    /// A batch of `images` images of `model` ran for `took` (`kind`: job or online), its
    /// share of the worker's time `share` (less than `took` when batches ran side by side).
    pub fn ran(&self, model: &str, kind: &str, images: usize, took: Duration, share: Duration) {
        self.pass(model, kind, images, took);
        self.busy(share);
    }

    /// One forward pass of `images` images of `model` ran for `took` (a job's batch may hold
    /// several passes).
    pub fn pass(&self, model: &str, kind: &str, images: usize, took: Duration) {
        let batch = BatchLabels {
            model: model.to_string(),
            batch_size: images.to_string(),
        };
        self.forward
            .get_or_create(&batch)
            .observe(took.as_secs_f64());
        let labels = KindLabels {
            model: model.to_string(),
            kind: kind.to_string(),
        };
        self.batch_size
            .get_or_create(&labels)
            .observe(images as f64);
        self.batches.get_or_create(&labels).inc();
        self.images.get_or_create(&labels).inc_by(images as u64);
    }

    /// The worker computed for `share` of its time (a batch's share, see `lanes`).
    pub fn busy(&self, share: Duration) {
        self.busy_nanos
            .fetch_add(share.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A batch's images of `model` were decoded in `took`.
    pub fn decoded(&self, model: &str, kind: &str, took: Duration) {
        let labels = KindLabels {
            model: model.to_string(),
            kind: kind.to_string(),
        };
        self.decode
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

impl Metrics {
    /// Sets the busy share before a scrape: the time some batch ran over life time (batches
    /// that ran side by side each count their share of it).
    pub fn update_busy(&self) {
        let life = self.started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
        let busy = self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        self.busy.set((busy / life).min(1.0));
    }
}
