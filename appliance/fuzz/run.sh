#!/usr/bin/env bash
# Fuzzes the pipeline (rialto_fixtures::fuzzing) with libFuzzer and AddressSanitizer.
#
#   appliance/fuzz/run.sh [SECONDS]     default 600
#
# The corpus it grows lands in appliance/fuzz/corpus/pipeline (kept in git;
# `cargo test` replays it); a crash is written to appliance/fuzz/artifacts/.
# cargo fuzz needs nightly features: RUSTC_BOOTSTRAP=1 unlocks them on the
# stable toolchain. The seeds came from `cargo run --bin seed -- ../shared/corpus/zeek-tunnels corpus/pipeline`.
set -euo pipefail
seconds=${1:-600}
here=$(cd "$(dirname "$0")" && pwd)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd "$here/.."
RUSTC_BOOTSTRAP=1 cargo fuzz run --release pipeline fuzz/corpus/pipeline -- \
	-max_total_time="$seconds" -max_len=16384 -print_final_stats=1
