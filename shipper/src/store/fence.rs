//! The fence: the lease deadline the cluster daemon moves forward and the
//! store's writer reads before it writes and before it acknowledges.

use super::*;

/// A deadline on a monotonic clock, moved forward by whoever holds the
/// lease (the cluster daemon) and read by the store's writer before it
/// writes and before it acknowledges.
#[derive(Debug)]
pub struct Fence {
    base: Instant,
    /// Nanoseconds after `base` until which writes are allowed.
    until_ns: AtomicU64,
}

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

impl Fence {
    /// A fence that allows nothing until extended.
    pub fn new() -> Fence {
        Fence {
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
        }
    }

    /// Allows writes until `until` (never moves the deadline back unless
    /// `revoke` is called).
    pub fn extend(&self, until: Instant) {
        let ns = until.saturating_duration_since(self.base).as_nanos() as u64;
        self.until_ns.fetch_max(ns, Ordering::SeqCst);
    }

    /// Allows no more writes, at once.
    pub fn revoke(&self) {
        self.until_ns.store(0, Ordering::SeqCst);
    }

    /// Until when writes are allowed (`None`: never extended, or revoked).
    pub fn until(&self) -> Option<Instant> {
        match self.until_ns.load(Ordering::SeqCst) {
            0 => None,
            ns => Some(self.base + std::time::Duration::from_nanos(ns)),
        }
    }

    /// True while writes are allowed.
    pub fn allows(&self) -> bool {
        (self.base.elapsed().as_nanos() as u64) < self.until_ns.load(Ordering::SeqCst)
    }
}
