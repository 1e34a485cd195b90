#!/usr/bin/env bash
# Two namespaces joined by one multi-queue veth pair: the smallest testbed.
#
#   testbed/pair.sh up NAME [QUEUES]   NAME-node and NAME-peer; idempotent
#   testbed/pair.sh down NAME          remove both; fine if they are absent
#
#   NAME-peer  NAMEp 198.18.0.2/24 fd00::2/64 ---- NAMEn 198.18.0.1/24 fd00::1/64  NAME-node
#              routes the VIPs (198.18.100.0/24, fd00:100::/64) and the
#              SNAT pool (198.18.200.0/28) via the node
#
# NAME is at most 14 characters (interface names are NAMEn and NAMEp).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

usage() {
	echo "usage: $0 up NAME [QUEUES] | down NAME" >&2
	exit 2
}

[ $# -ge 2 ] || usage
cmd=$1 name=$2 queues=${3:-1}
[ ${#name} -le 14 ] || { echo "error: NAME '$name' is longer than 14 characters" >&2; exit 2; }
node=$name-node peer=$name-peer

down() {
	ns_del "$node"
	ns_del "$peer"
}

up() {
	down
	ns_add "$node"
	ns_add "$peer"
	ip link add "${name}n" netns "$node" numtxqueues "$queues" numrxqueues "$queues" type veth \
		peer name "${name}p" netns "$peer" numtxqueues "$queues" numrxqueues "$queues"
	ip -n "$node" addr add 198.18.0.1/24 dev "${name}n"
	ip -n "$node" addr add fd00::1/64 dev "${name}n" nodad
	ip -n "$peer" addr add 198.18.0.2/24 dev "${name}p"
	ip -n "$peer" addr add fd00::2/64 dev "${name}p" nodad
	ip -n "$node" link set "${name}n" up
	ip -n "$peer" link set "${name}p" up
	veth_tune "$node" "${name}n"
	veth_tune "$peer" "${name}p"
	ip -n "$peer" route add 198.18.100.0/24 via 198.18.0.1
	ip -n "$peer" route add 198.18.200.0/28 via 198.18.0.1
	ip -n "$peer" -6 route add fd00:100::/64 via fd00::1
}

require_root
case $cmd in
up) up ;;
down) down ;;
*) usage ;;
esac
