//! Exact event counts, independent of the metrics recorder (what tests assert on).

use std::sync::atomic::{AtomicU64, Ordering};

/// Exact event counts of this control plane instance (independent of the metrics recorder).
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful compute starts.
    pub compute_starts: AtomicU64,
    /// Calls of [`ControlPlane::wake`] (any outcome).
    pub wakes: AtomicU64,
    /// Wakes answered by a start (or warm check) another waiter performed.
    pub wakes_coalesced: AtomicU64,
    /// Computes suspended (any reason).
    pub suspends: AtomicU64,
    /// Compute starts that failed.
    pub start_failures: AtomicU64,
    /// Role lookups that went to the store (cache misses, after coalescing).
    pub role_loads: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}
