//! A latency histogram with fixed buckets, lock-free, for the Prometheus
//! endpoint (fsync latency in the store, seal-to-replay lag in the
//! replayer). Values are recorded in microseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds, in seconds (Prometheus' `le`), +Inf implied.
pub const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

/// A histogram's counts: cumulative per bound (the last is +Inf), the sum
/// in seconds, and the count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BOUNDS.iter().position(|b| s <= *b).unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut run = 0;
        let cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                run += b.load(Ordering::Relaxed);
                run
            })
            .collect();
        Snapshot {
            count: run,
            cumulative,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(9));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1); // <= 0.5 ms
        assert_eq!(s.cumulative[5], 2); // <= 25 ms
        assert_eq!(s.cumulative[BOUNDS.len() - 1], 2); // <= 5 s
        assert_eq!(*s.cumulative.last().unwrap(), 3); // +Inf
        assert!((s.sum_seconds - 9.0203).abs() < 1e-6);
    }
}
