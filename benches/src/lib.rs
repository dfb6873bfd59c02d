//! Benchmarks live in `benches/benches/`: `cargo bench -p doze-benches`.
