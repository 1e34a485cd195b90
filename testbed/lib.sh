# shellcheck shell=bash
# Helpers shared by the testbed scripts. Every address comes from 198.18.0.0/15
# (RFC 2544's benchmarking range) or fd00::/8, and every name from the caller.

# ns_add NS: a fresh namespace with loopback up (an old one of that name is removed first).
ns_add() {
	ns_del "$1"
	ip netns add "$1"
	ip -n "$1" link set lo up
}

# state_dir NS: where the Rialto in namespace NS keeps its flow tables
# (rialto run --state-dir), removed with the namespace.
state_dir() {
	echo "/dev/shm/rialto-testbed/$1"
}

# ns_del NS: stop every process inside the namespace, then remove it and,
# with it, every interface inside it, and its Rialto's state directory.
ns_del() {
	local pids
	pids=$(ip netns pids "$1" 2>/dev/null || true)
	if [ -n "$pids" ]; then
		# shellcheck disable=SC2086
		kill $pids 2>/dev/null || true
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			[ -z "$(ip netns pids "$1" 2>/dev/null)" ] && break
			sleep 0.1
		done
		# shellcheck disable=SC2086
		kill -9 $(ip netns pids "$1" 2>/dev/null) 2>/dev/null || true
	fi
	ip netns del "$1" 2>/dev/null || true
	rm -rf "$(state_dir "$1")"
}

# veth_tune NS DEV: what a veth needs to carry XDP and AF_XDP traffic.
# - GRO on enables the veth's NAPI, without which frames that XDP or AF_XDP
#   transmits into the peer are dropped.
# - Checksum offload off: with it, the kernel leaves UDP/TCP checksums partial
#   for the peer to finish, and an XDP program sees (and forwards) them unfinished.
veth_tune() {
	ip netns exec "$1" ethtool -K "$2" gro on tx off rx off >/dev/null
}

# require_root: the scripts create namespaces and interfaces.
require_root() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "error: the testbed needs root (it creates network namespaces)" >&2
		exit 1
	fi
}
