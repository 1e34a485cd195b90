#!/usr/bin/env bash
# The cross-cluster testbed of DESIGN.md: every peer of Rialto is real.
#
#   testbed/topology.sh up NAME [QUEUES]   build it (idempotent); QUEUES on the border's uplink
#   testbed/topology.sh down NAME          remove it, servers included; fine if absent
#   testbed/topology.sh config NAME        print a Rialto config for it (the next hop is learned)
#   testbed/topology.sh http NAME POD stop|start   stop or start the HTTP server of POD (east-p1, ...)
#
#                      NAME-router: bridge br0, 198.18.0.254 198.18.1.254 198.18.2.254
#                      (the top of rack; routes the VIPs to the border node)
#          ____________________|______________________________________
#         |                    |                    |                 |
#   NAME-client          NAME-border          NAME-east            NAME-west
#   198.18.0.10          up0 198.18.1.1       198.18.2.1           198.18.2.2
#   curl, iperf3         Rialto               vx100: VXLAN VNI 100 vx200: VXLAN VNI 200
#                                             pods 198.19.0.0/24   pods 198.19.0.0/24 (the same)
#                                             NAME-east-p1 .10     NAME-west-p1 .10
#                                             NAME-east-p2 .11     NAME-west-p2 .11
#
# Each pod runs an HTTP server on port 80 answering "POD in cluster CLUSTER (ADDR)"
# and an iperf3 server. Each gateway's VXLAN device has a fixed MAC (Rialto's
# config names it) and sends everything to Rialto's VTEP; the gateway routes
# Rialto's SNAT pool (198.18.200.0/28) into its VXLAN device, to a static
# neighbour entry for Rialto's VTEP MAC, so no ARP crosses the tunnel.
# NAME is at most 8 characters.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

usage() {
	echo "usage: $0 up NAME [QUEUES] | down NAME | config NAME | http NAME POD stop|start" >&2
	exit 2
}

[ $# -ge 2 ] || usage
cmd=$1 n=$2 queues=${3:-2}
[ ${#n} -le 8 ] || { echo "error: NAME '$n' is longer than 8 characters" >&2; exit 2; }

RIALTO_VTEP_MAC=02:00:00:00:01:01
clusters=(east west)
declare -A vni=([east]=100 [west]=200) gw=([east]=198.18.2.1 [west]=198.18.2.2) \
	gwmac=([east]=02:00:00:00:02:01 [west]=02:00:00:00:02:02)
pods=(p1 p2)
declare -A podip=([p1]=198.19.0.10 [p2]=198.19.0.11)
files=/tmp/rialto-testbed-$n

namespaces() {
	echo "$n-router $n-client $n-border"
	for c in "${clusters[@]}"; do
		echo "$n-$c"
		for p in "${pods[@]}"; do echo "$n-$c-$p"; done
	done
}

down() {
	for ns in $(namespaces); do ns_del "$ns"; done
	rm -rf "$files"
}

# link NS_A IF_A NS_B IF_B [QUEUES]: a veth pair between two namespaces, up and tuned.
link() {
	local q=${5:-1}
	ip link add "$2" netns "$1" numtxqueues "$q" numrxqueues "$q" type veth \
		peer name "$4" netns "$3" numtxqueues "$q" numrxqueues "$q"
	ip -n "$1" link set "$2" up
	ip -n "$3" link set "$4" up
	veth_tune "$1" "$2"
	veth_tune "$3" "$4"
}

routing() {
	ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
		net.ipv4.conf.default.rp_filter=0
}

up() {
	down
	for ns in $(namespaces); do ns_add "$ns"; done
	mkdir -p "$files"

	local r=$n-router
	ip -n "$r" link add br0 type bridge
	ip -n "$r" link set br0 up
	ip -n "$r" addr add 198.18.0.254/24 dev br0
	ip -n "$r" addr add 198.18.1.254/24 dev br0
	ip -n "$r" addr add 198.18.2.254/24 dev br0
	routing "$r"
	ip -n "$r" route add 198.18.100.0/24 via 198.18.1.1

	link "$r" "${n}rc" "$n-client" "${n}c"
	ip -n "$r" link set "${n}rc" master br0
	ip -n "$n-client" addr add 198.18.0.10/24 dev "${n}c"
	ip -n "$n-client" route add default via 198.18.0.254

	link "$r" "${n}rb" "$n-border" up0 "$queues"
	ip -n "$r" link set "${n}rb" master br0
	ip -n "$n-border" addr add 198.18.1.1/24 dev up0
	ip -n "$n-border" route add default via 198.18.1.254

	for c in "${clusters[@]}"; do
		local g=$n-$c dev=vx${vni[$c]}
		link "$r" "${n}r${c:0:1}" "$g" eth0
		ip -n "$r" link set "${n}r${c:0:1}" master br0
		ip -n "$g" addr add "${gw[$c]}/24" dev eth0
		ip -n "$g" route add default via 198.18.2.254
		routing "$g"
		ip -n "$g" link add "$dev" address "${gwmac[$c]}" type vxlan id "${vni[$c]}" \
			local "${gw[$c]}" remote 198.18.1.1 dstport 4789 dev eth0
		ip -n "$g" link set "$dev" up
		ip -n "$g" route add 198.18.200.0/28 dev "$dev"
		ip -n "$g" neigh add 198.18.200.1 lladdr "$RIALTO_VTEP_MAC" dev "$dev" nud permanent
		ip -n "$g" link add pods type bridge
		ip -n "$g" link set pods up
		ip -n "$g" addr add 198.19.0.1/24 dev pods
		for p in "${pods[@]}"; do
			local pod=$g-$p
			link "$g" "${n}${c:0:1}$p" "$pod" eth0
			ip -n "$g" link set "${n}${c:0:1}$p" master pods
			ip -n "$pod" addr add "${podip[$p]}/24" dev eth0
			ip -n "$pod" route add default via 198.19.0.1
			mkdir -p "$files/$c-$p"
			echo "$p in cluster $c (${podip[$p]})" >"$files/$c-$p/index.html"
			http_start "$c" "$p"
			ip netns exec "$pod" iperf3 -s -D -B "${podip[$p]}" >/dev/null
		done
	done
	# Until the servers listen, a request would be refused.
	for c in "${clusters[@]}"; do
		for p in "${pods[@]}"; do http_wait "$c" "$p"; done
	done
}

# http_start CLUSTER POD: the pod's HTTP server, in the background.
http_start() {
	local ip=${podip[$2]}
	ip netns exec "$n-$1-$2" python3 -m http.server 80 --bind "$ip" \
		--directory "$files/$1-$2" >/dev/null 2>&1 &
}

# http_wait CLUSTER POD: until the pod's HTTP server listens.
http_wait() {
	local tries=200
	until ip netns exec "$n-$1-$2" bash -c "exec 3<>/dev/tcp/${podip[$2]}/80" 2>/dev/null; do
		tries=$((tries - 1))
		[ $tries -gt 0 ] || { echo "error: the HTTP server of $1-$2 did not start" >&2; exit 1; }
		sleep 0.1
	done
}

# http POD stop|start: a pod's HTTP server stopped (its port then refuses
# connections), or started again and listening.
http() {
	local c=${1%-*} p=${1#*-}
	[ -n "${podip[$p]:-}" ] && [ -n "${vni[$c]:-}" ] || usage
	case $2 in
	stop)
		local pid
		for pid in $(ip netns pids "$n-$c-$p"); do
			if tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | grep -q "http.server"; then
				kill "$pid"
			fi
		done
		# Until nothing listens on port 80.
		local tries=100
		while ip netns exec "$n-$c-$p" bash -c "exec 3<>/dev/tcp/${podip[$p]}/80" 2>/dev/null; do
			tries=$((tries - 1))
			[ $tries -gt 0 ] || { echo "error: the HTTP server of $1 did not stop" >&2; exit 1; }
			sleep 0.1
		done
		;;
	start)
		http_start "$c" "$p"
		http_wait "$c" "$p"
		;;
	*) usage ;;
	esac
}

config() {
	cat <<EOF
# Rialto on $n-border, generated by testbed/topology.sh config $n. The next
# hop's MAC ($n-router's br0) is learned from the kernel: no next_hop_mac.
[node]
vteps = ["198.18.1.1"]
vtep_mac = "$RIALTO_VTEP_MAC"    # the gateways' static neighbour entry for Rialto

[snat]
addresses = ["198.18.200.1"]
ports = "10000-59999"
EOF
	for c in "${clusters[@]}"; do
		cat <<EOF

[[cluster]]
name = "$c"
vni = ${vni[$c]}
gateways = ["${gw[$c]}"]
gateway_mac = "${gwmac[$c]}"
EOF
	done
	cat <<EOF

# The same pod addresses in both clusters: four backends, each checked
# through its cluster's tunnel (an HTTP GET every half second: two failures
# in a row take a pod out of new flows, two passes bring it back).
[[service]]
name = "web"
vip = "198.18.100.1:80/TCP"
backends = [
    { cluster = "east", addr = "198.19.0.10:80" },
    { cluster = "east", addr = "198.19.0.11:80" },
    { cluster = "west", addr = "198.19.0.10:80" },
    { cluster = "west", addr = "198.19.0.11:80" },
]
check = { kind = "http", path = "/", interval_ms = 500, timeout_ms = 400, rise = 2, fall = 2 }

# One backend: an iperf3 test's control and data connections must meet the
# same server, and Rialto has no session affinity (each connection is
# balanced on its own).
[[service]]
name = "iperf"
vip = "198.18.100.2:5201/TCP"
backends = [{ cluster = "west", addr = "198.19.0.10:5201" }]

# iperf3 -u: its control connection above, its datagrams here.
[[service]]
name = "iperf-udp"
vip = "198.18.100.2:5201/UDP"
backends = [{ cluster = "west", addr = "198.19.0.10:5201" }]
EOF
}

case $cmd in
up) require_root; up ;;
down) require_root; down ;;
config) config ;;
http) require_root; [ $# -eq 4 ] || usage; http "$3" "$4" ;;
*) usage ;;
esac
