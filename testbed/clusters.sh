# shellcheck shell=bash
# The parts the testbeds are built from (testbed/topology.sh: one border
# node; testbed/fleet.sh: several behind BGP): a router, a client, border
# nodes' uplinks, and two clusters, east and west, each a gateway with the
# kernel's own VXLAN device and two pods on the same addresses as the other
# cluster's, running an HTTP server ("POD in cluster CLUSTER (ADDR)") and an
# iperf3 server. Sourced after lib.sh; the caller sets n (the testbed's
# name, at most 8 characters) and files (its directory).
#
# A gateway's VXLAN device has a fixed MAC (Rialto's config names it) and no
# remote of its own: the gateway routes the SNAT addresses (198.18.200.0/24)
# into it, to a static neighbour entry per border node (that node's VTEP
# MAC), and a static FDB entry sends that MAC to the node's VTEP: no ARP
# crosses the tunnel, and each node's replies go to that node (Flannel's
# way).

clusters=(east west)
declare -A vni=([east]=100 [west]=200) gw=([east]=198.18.2.1 [west]=198.18.2.2) \
	gwmac=([east]=02:00:00:00:02:01 [west]=02:00:00:00:02:02)
pods=(p1 p2)
declare -A podip=([p1]=198.19.0.10 [p2]=198.19.0.11)

# The clusters' namespaces.
cluster_namespaces() {
	for c in "${clusters[@]}"; do
		echo "$n-$c"
		for p in "${pods[@]}"; do echo "$n-$c-$p"; done
	done
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

# router_up: NAME-router, a bridge (br0) joining everyone, and the gateway
# of each subnet: clients, border nodes, cluster gateways. Everyone shares
# one link, so the router would send ICMP redirects ("for the VIP, go
# straight to node 2"), which its neighbours would follow per destination:
# every connection to a VIP would then go to one node, past the router's
# ECMP, and keep going there once that node is withdrawn. It sends none.
router_up() {
	local r=$n-router
	ip -n "$r" link add br0 type bridge
	ip -n "$r" link set br0 up
	ip -n "$r" addr add 198.18.0.254/24 dev br0
	ip -n "$r" addr add 198.18.1.254/24 dev br0
	ip -n "$r" addr add 198.18.2.254/24 dev br0
	routing "$r"
	ip netns exec "$r" sysctl -qw net.ipv4.conf.all.send_redirects=0 \
		net.ipv4.conf.default.send_redirects=0 net.ipv4.conf.br0.send_redirects=0
}

# client_up ADDR...: NAME-client, with these addresses (the first its source
# by default).
client_up() {
	local r=$n-router a
	link "$r" "${n}rc" "$n-client" "${n}c"
	ip -n "$r" link set "${n}rc" master br0
	for a in "$@"; do ip -n "$n-client" addr add "$a/24" dev "${n}c"; done
	ip -n "$n-client" route add default via 198.18.0.254
}

# uplink_up NS ROUTER_IF VTEP QUEUES: a border node's uplink up0 in NS, with
# the address VTEP, linked to the router's bridge.
uplink_up() {
	local r=$n-router
	link "$r" "$2" "$1" up0 "$4"
	ip -n "$r" link set "$2" master br0
	ip -n "$1" addr add "$3/24" dev up0
	ip -n "$1" route add default via 198.18.1.254
}

# clusters_up: the gateways and their pods, servers running.
clusters_up() {
	local r=$n-router c p
	for c in "${clusters[@]}"; do
		local g=$n-$c dev=vx${vni[$c]}
		link "$r" "${n}r${c:0:1}" "$g" eth0
		ip -n "$r" link set "${n}r${c:0:1}" master br0
		ip -n "$g" addr add "${gw[$c]}/24" dev eth0
		ip -n "$g" route add default via 198.18.2.254
		routing "$g"
		ip -n "$g" link add "$dev" address "${gwmac[$c]}" type vxlan id "${vni[$c]}" \
			local "${gw[$c]}" dstport 4789 nolearning dev eth0
		ip -n "$g" link set "$dev" up
		ip -n "$g" route add 198.18.200.0/24 dev "$dev"
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

# cluster_peer SNAT MAC VTEP: on every gateway, the border node whose VTEP is
# VTEP, its VTEP MAC, and its SNAT address.
cluster_peer() {
	local c
	for c in "${clusters[@]}"; do
		local g=$n-$c dev=vx${vni[$c]}
		ip -n "$g" neigh replace "$1" lladdr "$2" dev "$dev" nud permanent
		bridge -n "$g" fdb append "$2" dev "$dev" dst "$3"
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

# rialto_config VTEP VTEP_MAC SNAT: a border node's Rialto config (the next
# hop's MAC, the router's, is learned from the kernel).
rialto_config() {
	cat <<EOF
[node]
vteps = ["$1"]
vtep_mac = "$2"    # the gateways' static neighbour entry for this node

[snat]
addresses = ["$3"]
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
