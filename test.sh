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
# In the release profile, as setup.sh builds and the tests run: the build
# scripts and proc-macros it compiles are theirs, not compiled again.
cargo clippy --release --locked --workspace --all-targets -- -D warnings

# The dataplane stays pure: no I/O, CLI, HTTP, netlink or config-parsing
# crate among its dependencies (nor among the tables' it indexes); the fuzz
# crate builds without AF_XDP, libxdp or the BPF toolchain.
io='xsk-rs|libxdp-sys|aya|aya-obj|xdp-redirect|rialto|nix|libc|netlink-.*|tiny_http|prometheus|clap|tracing'
parsing='toml|yaml.*|pcap-file'
pure() { # WHAT, the pattern of what it must not depend on, cargo tree's arguments
	local what=$1 pattern=$2 found
	shift 2
	found=$(cargo tree -e normal --prefix none --format '{p}' "$@" | awk '{print $1}' | sort -u | grep -xE "$pattern" || true)
	if [ -n "$found" ]; then
		echo "error: $what depends on $(echo "$found" | tr '\n' ' ')" >&2
		exit 1
	fi
}
pure rialto-dataplane "$io|$parsing" --locked -p rialto-dataplane
pure rialto-tables "$io|$parsing" --locked -p rialto-tables
pure "the fuzz crate" "$io" --manifest-path appliance/fuzz/Cargo.toml
echo "test.sh: the dataplane and its tables depend on no I/O or parsing crate; the fuzz crate on no I/O crate"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --locked --workspace 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
