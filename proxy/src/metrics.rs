//! The proxy's Prometheus metrics. Handles are resolved once (names and labels are fixed), so
//! counting on the relay path is one atomic add, never a registry lookup.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `doze_proxy_connections_accepted_total` | counter | | TCP connections accepted |
//! | `doze_proxy_connections_active` | gauge | | connections open now (any phase) |
//! | `doze_proxy_connections_closed_total` | counter | `reason` | connections ended, by why |
//! | `doze_proxy_handshake_duration_seconds` | histogram | | accept to authenticated |
//! | `doze_proxy_wake_wait_duration_seconds` | histogram | `cold_start` | time a client waited for its compute |
//! | `doze_proxy_backend_login_duration_seconds` | histogram | | backend connect + login |
//! | `doze_proxy_bytes_total` | counter | `direction` (`client_to_backend`, `backend_to_client`) | bytes relayed |
//! | `doze_proxy_auth_failures_total` | counter | `reason` (`bad_password`, `unknown_project`, `no_project`, `bad_name`) | refused logins |
//! | `doze_proxy_auth_throttled_total` | counter | | logins whose answer was delayed after failed passwords |
//! | `doze_pool_checkouts_total` | counter | `result` (`hit`, `miss`) | sessions that asked the pool for a backend session |
//! | `doze_pool_idle_sessions` | gauge | | backend sessions parked in pools now |
//! | `doze_pool_resets_total` | counter | `result` (`ok`, `failed`) | check-ins (COM_RESET_CONNECTION and its check) |
//! | `doze_pool_discards_total` | counter | `reason` (`drained`, `idle_timeout`, `lifetime`, `stale`, `full`, `reset_failed`, `busy`, `unclean`, `init_db`) | backend sessions closed instead of reused |
//! | `doze_proxy_kills_total` | counter | `result` (`done`, `refused`, `failed`) | KILL statements and COM_PROCESS_KILL doze carried out or refused |
//! | `doze_build_info` | gauge | `version`, `commit` | 1 |
//! | `process_*` | | | CPU, memory, open files and threads of the doze process (metrics-process) |

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Buckets of every duration histogram (the control plane's too): 0.5 ms to 30 s.
pub use doze_gateway::DURATION_BUCKETS;

/// Pre-resolved handles of the relay's hot counters.
pub struct Hot {
    pub bytes_c2b: Counter,
    pub bytes_b2c: Counter,
    pub active: Gauge,
}

/// The hot handles, registered against whatever recorder is installed at first use.
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        bytes_c2b: counter!("doze_proxy_bytes_total", "direction" => "client_to_backend"),
        bytes_b2c: counter!("doze_proxy_bytes_total", "direction" => "backend_to_client"),
        active: gauge!("doze_proxy_connections_active"),
    })
}

/// Registers the descriptions (Prometheus HELP lines) of every proxy metric with whatever
/// recorder is installed.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "doze_build_info",
        "1, labelled with the version and git commit doze was built from"
    );
    gauge!(
        "doze_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => doze_gateway::GIT_COMMIT
    )
    .set(1.0);
    // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...:
    // refreshed at each scrape by `collect_process`.
    metrics_process::Collector::default().describe();
    describe_counter!(
        "doze_log_lines_dropped_total",
        "Log lines dropped because the queue to stderr was full (a stalled log reader)"
    );
    describe_counter!(
        "doze_proxy_connections_accepted_total",
        "Client TCP connections accepted"
    );
    describe_gauge!(
        "doze_proxy_connections_active",
        "Client connections open now, in any phase"
    );
    describe_counter!(
        "doze_proxy_connections_closed_total",
        "Client connections ended, by reason"
    );
    describe_histogram!(
        "doze_proxy_handshake_duration_seconds",
        Unit::Seconds,
        "Time from accept to authenticated"
    );
    describe_histogram!(
        "doze_proxy_wake_wait_duration_seconds",
        Unit::Seconds,
        "Time a client waited for its project's compute, by cold_start"
    );
    describe_histogram!(
        "doze_proxy_backend_login_duration_seconds",
        Unit::Seconds,
        "Time to connect and log in to a compute"
    );
    describe_counter!("doze_proxy_bytes_total", "Bytes relayed, by direction");
    describe_counter!(
        "doze_proxy_auth_failures_total",
        "Refused logins, by reason"
    );
    describe_counter!(
        "doze_proxy_auth_throttled_total",
        "Logins whose answer was delayed after failed passwords"
    );
    describe_counter!(
        "doze_pool_checkouts_total",
        "Sessions that asked the pool for a logged-in backend session, by result (hit, miss)"
    );
    describe_gauge!(
        "doze_pool_idle_sessions",
        "Backend sessions parked in the pools of every project now"
    );
    describe_counter!(
        "doze_pool_resets_total",
        "Backend sessions reset (COM_RESET_CONNECTION and its check) after their client left, by result"
    );
    describe_counter!(
        "doze_pool_discards_total",
        "Backend sessions closed instead of reused, by reason"
    );
    describe_counter!(
        "doze_proxy_kills_total",
        "KILL statements and COM_PROCESS_KILL commands handled by doze, by result"
    );
}

pub fn pool_checkout(result: &'static str) {
    counter!("doze_pool_checkouts_total", "result" => result).increment(1);
}

pub fn kill(result: &'static str) {
    counter!("doze_proxy_kills_total", "result" => result).increment(1);
}

pub fn accepted() {
    counter!("doze_proxy_connections_accepted_total").increment(1);
}

pub fn closed(reason: &'static str) {
    counter!("doze_proxy_connections_closed_total", "reason" => reason).increment(1);
}

pub fn auth_failure(reason: &'static str) {
    counter!("doze_proxy_auth_failures_total", "reason" => reason).increment(1);
}

pub fn auth_throttled() {
    counter!("doze_proxy_auth_throttled_total").increment(1);
}

pub fn handshake_duration() -> Histogram {
    histogram!("doze_proxy_handshake_duration_seconds")
}

pub fn wake_wait(cold_start: &'static str) -> Histogram {
    histogram!("doze_proxy_wake_wait_duration_seconds", "cold_start" => cold_start)
}

pub fn backend_login() -> Histogram {
    histogram!("doze_proxy_backend_login_duration_seconds")
}

/// Counts one open connection in the active gauge until dropped.
pub struct ActiveGuard(());

impl ActiveGuard {
    pub fn new() -> Self {
        hot().active.increment(1.0);
        Self(())
    }
}

impl Default for ActiveGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        hot().active.decrement(1.0);
    }
}

/// Refreshes the `process_*` metrics (CPU, memory, open files, threads) right before a scrape.
pub fn collect_process() {
    metrics_process::Collector::default().collect();
}
