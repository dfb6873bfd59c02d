//! Exact event counts, independent of the metrics recorder (what tests assert on), and the one
//! place each event is recorded: every `record_*` method bumps the count and the Prometheus
//! metric together, so the two can never disagree.

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
    /// Computes frozen.
    pub freezes: AtomicU64,
    /// Frozen computes thawed for clients (one per herd).
    pub thaws: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

impl Stats {
    /// A compute started, after `took`.
    pub(crate) fn record_start(&self, took: std::time::Duration) {
        Self::bump(&self.compute_starts);
        metrics::counter!(crate::metrics::COMPUTE_STARTS).increment(1);
        metrics::histogram!(crate::metrics::COMPUTE_START_DURATION).record(took.as_secs_f64());
    }

    /// A compute failed to start.
    pub(crate) fn record_start_failure(&self) {
        Self::bump(&self.start_failures);
        metrics::counter!(crate::metrics::COMPUTE_START_FAILURES).increment(1);
    }

    /// A wake was answered by a start (or check) another waiter performed.
    pub(crate) fn record_coalesced(&self) {
        Self::bump(&self.wakes_coalesced);
        metrics::counter!(crate::metrics::WAKES_COALESCED).increment(1);
    }

    /// A compute was suspended, for `reason`.
    pub(crate) fn record_suspend(&self, reason: &str) {
        Self::bump(&self.suspends);
        metrics::counter!(crate::metrics::SUSPENDS, "reason" => reason.to_owned()).increment(1);
    }

    /// A compute was frozen, for `reason`.
    pub(crate) fn record_freeze(&self, reason: &str) {
        Self::bump(&self.freezes);
        metrics::counter!(crate::metrics::FREEZES, "reason" => reason.to_owned()).increment(1);
    }

    /// A frozen compute was thawed for a wake, after `took`.
    pub(crate) fn record_thaw(&self, took: std::time::Duration) {
        Self::bump(&self.thaws);
        metrics::histogram!(crate::metrics::THAW_DURATION).record(took.as_secs_f64());
    }
}
