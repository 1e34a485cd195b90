#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, as root, to build, test and run Rialto:
# Debian packages, bpffs, release build. (dpdk-compare/testpmd.sh reserves
# DPDK's hugepages when it runs.)
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
	echo "error: run setup.sh as root (it installs packages and mounts bpffs)" >&2
	exit 1
fi

packages=(
	# build: the XDP program (clang, libbpf headers) and xsk-rs's libxdp
	clang llvm libclang-dev libbpf-dev libelf-dev zlib1g-dev m4 pkg-config make gcc libc6-dev
	# the testbed and its peers
	iproute2 iputils-ping arping ethtool tcpdump iperf3 nftables util-linux procps python3 curl
	# independent decoders for the tests
	tshark python3-scapy
	# the systemd unit's check (systemd-analyze)
	systemd
	# BGP: each node's speaker and the fleet testbed's router (BIRD 2; setpriv ties a
	# node's speaker to its Rialto)
	bird2 util-linux
	# the side-by-side benchmark: dpdk-testpmd (net_af_xdp, net_af_packet), its plot, callgrind,
	# the XDP programs' run time (bpftool)
	python3-matplotlib valgrind bpftool
	dpdk dpdk-dev
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "setup: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rialto pins nothing, but bpftool and operators expect bpffs.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

if ! command -v cargo >/dev/null; then
	echo "error: Rust (cargo >= 1.95) is not installed; install it with rustup, then run setup.sh again" >&2
	exit 1
fi
# test.sh checks formatting and lints.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
	rustup component add rustfmt clippy || {
		echo "error: the Rust toolchain lacks rustfmt or clippy: rustup component add rustfmt clippy" >&2
		exit 1
	}
fi
cargo build --release --locked
echo "setup: done; target/release/rialto is built"
