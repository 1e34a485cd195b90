#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the privileged tests
# (network namespaces, XDP, AF_XDP sockets), which need root and fail with a
# message saying so rather than pass without running.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
	echo "error: the tests build network namespaces and attach XDP programs: run test.sh as root" >&2
	exit 1
fi
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked --workspace 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
