//! Benchmarks live in `benches/benches/`: `cargo bench -p doze-benches`.

/// A count from the environment (`DOZE_BENCH_RUNS` and the like), or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runtime of the end-to-end benchmarks: two workers, as the machine has two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build the tokio runtime: {e}"),
    }
}
