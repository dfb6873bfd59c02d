//! Metric names and helpers. doze-control only emits through the `metrics` facade; the `doze`
//! binary installs the Prometheus recorder with [`histogram_buckets`]'s matcher (every
//! `*_seconds` histogram gets [`DURATION_BUCKETS`]), and so do the tests.

use metrics_exporter_prometheus::Matcher;

/// Histogram, labels `outcome` = warm | resumed | thawed | failed and `from` = running |
/// frozen | stopped | unknown (what the compute was woken from): time to answer a wake.
pub const WAKE_DURATION: &str = "doze_wake_duration_seconds";
/// Counter: successful compute starts.
pub const COMPUTE_STARTS: &str = "doze_compute_starts_total";
/// Counter: compute starts that failed (the server exited, did not answer, lost its lease).
pub const COMPUTE_START_FAILURES: &str = "doze_compute_start_failures_total";
/// Counter, label `reason` = backoff | quota: wakes refused without trying, apart from failures.
pub const WAKES_REFUSED: &str = "doze_wakes_refused_total";
/// Histogram: time from starting a compute until it accepts connections.
pub const COMPUTE_START_DURATION: &str = "doze_compute_start_duration_seconds";
/// Counter: wakes answered by a start another concurrent wake performed.
pub const WAKES_COALESCED: &str = "doze_wakes_coalesced_total";
/// Gauge, label `state`: computes per state.
pub const COMPUTES: &str = "doze_computes";
/// Counter, label `state` = running | frozen: seconds computes spent holding a server, summed
/// over computes (the integral of `doze_computes`); the per-project view is the usage API.
pub const COMPUTE_SECONDS: &str = "doze_compute_seconds_total";
/// Counter, label `reason` = idle | api | shutdown | deleted: computes suspended.
pub const SUSPENDS: &str = "doze_suspends_total";
/// Counter: computes recorded as running that the scheduler found dead (crashed, killed).
pub const COMPUTES_LOST: &str = "doze_computes_lost_total";
/// Counter: idle suspends skipped because clients were connected to the compute directly.
pub const DIRECT_SESSIONS_SEEN: &str = "doze_idle_suspends_skipped_direct_sessions_total";

/// Counter, label `reason` = idle | api | adopted: computes frozen.
pub const FREEZES: &str = "doze_freezes_total";
/// Histogram: time to thaw a frozen compute for a wake (thaw, liveness check, state change).
pub const THAW_DURATION: &str = "doze_thaw_duration_seconds";
/// Gauge: memory held by frozen computes, in bytes (what `--frozen-memory-budget` bounds).
pub const FROZEN_MEMORY: &str = "doze_frozen_memory_bytes";
/// Gauge: the frozen memory budget in bytes (0: none).
pub const FROZEN_MEMORY_BUDGET: &str = "doze_frozen_memory_budget_bytes";

/// Gauge: replicas whose heartbeat is fresh (this one included).
pub const REPLICAS_LIVE: &str = "doze_replicas_live";
/// Gauge: 1 while this replica holds the scheduler's leader lease.
pub const SCHEDULER_LEADER: &str = "doze_scheduler_leader";
/// Counter, label `outcome` = won | lost | takeover: start leases contended for.
pub const START_LEASES: &str = "doze_start_leases_total";
/// Counter, label `kind` = compute | role | project | token | flush: invalidations received from
/// other replicas (`flush`: everything, after the listener reconnected).
pub const INVALIDATIONS: &str = "doze_invalidations_received_total";

/// Bucket boundaries (seconds) of every duration histogram: 0.5 ms .. 30 s.
pub use doze_gateway::DURATION_BUCKETS;

/// Matchers and buckets for `PrometheusBuilder::set_buckets_for_metric`: what the binary
/// installs.
pub fn histogram_buckets() -> Vec<(Matcher, Vec<f64>)> {
    vec![(
        Matcher::Suffix("_seconds".to_owned()),
        DURATION_BUCKETS.to_vec(),
    )]
}

/// Registers descriptions with whatever recorder is installed.
pub fn describe() {
    metrics::describe_histogram!(
        WAKE_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a wake, by outcome (warm, resumed, thawed, failed) and by what the compute was woken from (running, frozen, stopped)"
    );
    metrics::describe_counter!(FREEZES, "Computes frozen, by reason (idle, api, adopted)");
    metrics::describe_histogram!(
        THAW_DURATION,
        metrics::Unit::Seconds,
        "Time to thaw a frozen compute for a wake"
    );
    metrics::describe_gauge!(
        FROZEN_MEMORY,
        metrics::Unit::Bytes,
        "Memory held by frozen computes"
    );
    metrics::describe_gauge!(
        FROZEN_MEMORY_BUDGET,
        metrics::Unit::Bytes,
        "Frozen memory above which the least recently used frozen computes are stopped (0: no budget)"
    );
    metrics::describe_counter!(COMPUTE_STARTS, "Compute starts that succeeded");
    metrics::describe_counter!(
        COMPUTE_START_FAILURES,
        "Compute starts that failed (the server exited, did not answer in time, or lost its lease)"
    );
    metrics::describe_counter!(
        WAKES_REFUSED,
        "Wakes refused without a start, by reason (backoff: the compute failed to start recently and its next attempt is not due yet)"
    );
    metrics::describe_histogram!(
        COMPUTE_START_DURATION,
        metrics::Unit::Seconds,
        "Time from starting a compute until it accepts connections"
    );
    metrics::describe_counter!(
        WAKES_COALESCED,
        "Wakes answered by a start that another concurrent wake performed"
    );
    metrics::describe_gauge!(COMPUTES, "Computes per state");
    metrics::describe_counter!(SUSPENDS, "Computes suspended, by reason");
    metrics::describe_counter!(
        COMPUTES_LOST,
        "Computes recorded as running that the scheduler found dead"
    );
    metrics::describe_gauge!(REPLICAS_LIVE, "Replicas of doze whose heartbeat is fresh");
    metrics::describe_gauge!(
        SCHEDULER_LEADER,
        "1 while this replica holds the scheduler's leader lease"
    );
    metrics::describe_counter!(
        START_LEASES,
        "Start leases contended for, by outcome (won, lost to another replica, takeover of an expired one)"
    );
    metrics::describe_counter!(
        COMPUTE_SECONDS,
        metrics::Unit::Seconds,
        "Compute seconds summed over every compute, by state (running: starting, running or suspending; frozen), as this replica sees them"
    );
    metrics::describe_counter!(
        INVALIDATIONS,
        "Cache invalidations received from other replicas, by kind"
    );
    metrics::describe_counter!(
        DIRECT_SESSIONS_SEEN,
        "Idle suspends skipped because clients were connected to the compute directly"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_cover_half_a_millisecond_to_30s() {
        let b = super::histogram_buckets();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].1.first(), Some(&0.0005));
        assert_eq!(b[0].1.last(), Some(&30.0));
    }
}
