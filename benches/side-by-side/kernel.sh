#!/usr/bin/env bash
# The kernel baseline: Linux doing Rialto's job (rialto.toml) in namespace NS
# on interface IF, for the side-by-side benchmark.
#
#   kernel.sh up NS IF CPUMASK    (CPUMASK: the CPUs receive processing runs on, RPS)
#   kernel.sh down NS IF
#
# nftables DNATs UDP to the VIP onto one of the eight backends (a hash of the
# client's address and port, as Maglev hashes the flow), conntrack remembers
# the flow, the backend's cluster is routed into a kernel VXLAN device toward
# that cluster's gateway, and nftables SNATs the source to the SNAT address.
# Neighbours are static (the gateways' VXLAN MAC for the pods, the generator's
# MAC for the gateways), as Rialto's config names them, so no ARP is sent.
set -euo pipefail
cmd=${1:?usage: kernel.sh up NS IF CPUMASK | down NS IF}
ns=${2:?namespace}
dev=${3:?interface}
in_ns() { ip netns exec "$ns" "$@"; }
# Receive Packet Steering of every queue of the device (the namespace's sysfs).
rps() { in_ns sh -c "for q in /sys/class/net/$dev/queues/rx-*/rps_cpus; do echo $1 > \$q; done"; }

down() {
	in_ns nft delete table ip rialto_bench 2>/dev/null || true
	for vni in 100 200; do ip -n "$ns" link del "vx$vni" 2>/dev/null || true; done
	ip -n "$ns" route del 198.18.2.0/24 2>/dev/null || true
	ip -n "$ns" neigh del 198.18.0.2 dev "$dev" 2>/dev/null || true
	rps 0 2>/dev/null || true
	in_ns sysctl -qw net.ipv4.ip_forward=0
}

case $cmd in
up)
	mask=${4:?CPU mask}
	down
	in_ns sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
		net.ipv4.conf.default.rp_filter=0 "net.ipv4.conf.$dev.rp_filter=0"
	# The gateways, 198.18.2.1 and .2, are behind the generator.
	ip -n "$ns" neigh replace 198.18.0.2 lladdr 02:00:00:00:00:02 dev "$dev" nud permanent
	ip -n "$ns" route replace 198.18.2.0/24 via 198.18.0.2 dev "$dev"
	for c in "100 198.18.2.1 02:00:00:00:02:01 1" "200 198.18.2.2 02:00:00:00:02:02 2"; do
		read -r vni gw mac net <<<"$c"
		ip -n "$ns" link add "vx$vni" type vxlan id "$vni" local 198.18.0.1 remote "$gw" \
			dstport 4789 dev "$dev" noudpcsum
		# No IPv6 on the tunnel: its own chatter (MLD, router solicitations)
		# would reach the sink as frames nobody sent.
		in_ns sysctl -qw "net.ipv6.conf.vx$vni.disable_ipv6=1"
		ip -n "$ns" link set "vx$vni" up
		ip -n "$ns" route replace "198.19.$net.0/24" dev "vx$vni"
		for host in 10 11 12 13; do
			ip -n "$ns" neigh replace "198.19.$net.$host" lladdr "$mac" dev "vx$vni" nud permanent
		done
	done
	in_ns nft -f - <<-'NFT'
		table ip rialto_bench {
			chain prerouting {
				type nat hook prerouting priority dstnat; policy accept;
				ip daddr 198.18.100.1 udp dport 7 dnat to jhash ip saddr . udp sport mod 8 map {
					0 : 198.19.1.10, 1 : 198.19.1.11, 2 : 198.19.1.12, 3 : 198.19.1.13,
					4 : 198.19.2.10, 5 : 198.19.2.11, 6 : 198.19.2.12, 7 : 198.19.2.13 }
			}
			chain postrouting {
				type nat hook postrouting priority srcnat; policy accept;
				ip daddr 198.19.0.0/16 snat to 198.18.200.1
			}
		}
	NFT
	# After the NAT rules, which load conntrack where it is a module: the
	# UDP timeout of rialto.toml.
	in_ns sysctl -qw net.netfilter.nf_conntrack_udp_timeout=30 net.netfilter.nf_conntrack_udp_timeout_stream=30
	rps "$mask"
	;;
down) down ;;
*)
	echo "usage: kernel.sh up NS IF CPUMASK | down NS IF" >&2
	exit 2
	;;
esac
