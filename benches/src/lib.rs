//! Rialto's benchmarks live in `benches/`; `cargo bench -p rialto-benches`.
