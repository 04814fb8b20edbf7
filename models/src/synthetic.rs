//! The synthetic calibration architecture: a classifier whose CPU cost per image is declared
//! and whose outputs are deterministic, for measuring scheduling and failover precisely.
//!
//! The network is real and small: the mean of each colour channel of the `(3, S, S)` input
//! (preprocessed like ResNet's, at 32 × 32) goes through one linear layer
//! (`fc.weight` `[1000, 3]`, `fc.bias` `[1000]`) to 1000 logits, so the same image and
//! weights always give the same classes. On top of that, every image costs exactly
//! `cost_ms` of CPU time on the thread that runs it: arithmetic that is thrown away, timed
//! with the thread's CPU clock, so a busy machine stretches the wall time but not the cost.
//! Images of a batch run side by side on the worker's pool like every architecture's.
//!
//! It is a tool for operators (what fair-time scheduling does with two models of known cost
//! ratio, how fast a failover returns to full rate), not a stand-in for the real networks.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use super::model::Network;
use super::preprocess::Preprocess;

/// Preprocessing: ResNet's, at 32 × 32.
pub const PREPROCESS: Preprocess = Preprocess::imagenet(32, 32);

/// The synthetic network.
pub struct Synthetic {
    weight: Tensor,
    bias: Tensor,
    cost: Duration,
}

impl Synthetic {
    /// Reads `fc.weight` and `fc.bias`; each image will cost `cost_ms` of CPU time.
    pub fn load(vb: VarBuilder, cost_ms: u32) -> candle_core::Result<Synthetic> {
        let vb = vb.pp("fc");
        Ok(Synthetic {
            weight: vb.get((super::NUM_CLASSES, 3), "weight")?,
            bias: vb.get(super::NUM_CLASSES, "bias")?,
            cost: Duration::from_millis(u64::from(cost_ms)),
        })
    }
}

impl Network for Synthetic {
    fn late(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(xs.clone())
    }

    fn early(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (n, _, _, _) = xs.dims4()?;
        for _ in 0..n {
            burn_cpu(self.cost);
        }
        let pooled = xs.mean(D::Minus1)?.mean(D::Minus1)?; // (N, 3)
        pooled.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// Spends `cost` of this thread's CPU time on arithmetic whose result is discarded.
fn burn_cpu(cost: Duration) {
    let Some(start) = thread_cpu_time() else {
        // No per-thread CPU clock: wall time, as close as this platform gets.
        let until = std::time::Instant::now() + cost;
        while std::time::Instant::now() < until {
            spin(black_box(1.0));
        }
        return;
    };
    let mut x = 1.0f64;
    loop {
        x = spin(black_box(x));
        match thread_cpu_time() {
            Some(now) if now.saturating_sub(start) < cost => {}
            _ => break,
        }
    }
    black_box(x);
}

/// About 20 µs of floating-point work.
fn spin(mut x: f64) -> f64 {
    for _ in 0..10_000 {
        x = x.mul_add(1.000_000_1, 1e-9);
    }
    x
}

/// CPU time this thread has used.
#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_costs_its_declared_cpu_time() {
        let cost = Duration::from_millis(20);
        let before = thread_cpu_time().unwrap();
        burn_cpu(cost);
        let used = thread_cpu_time().unwrap() - before;
        assert!(used >= cost, "{used:?}");
        assert!(used < cost + Duration::from_millis(15), "{used:?}");
    }
}
