#!/usr/bin/env bash
# DPDK's testpmd as the device under test of the side-by-side benchmark
# (benches/side-by-side.py): it forwards what arrives on a veth back out of
# it, as Rialto does, with one queue and one forwarding core per CORE.
#
#   dpdk-compare/testpmd.sh NS IFACE xdp|packet io|macswap MAIN_CORE CORE...
#
# xdp:    the net_af_xdp PMD; on a veth it takes one queue per port, so each
#         queue is a port of its own (start_queue=Q, queue_count=1), looped
#         onto itself;
# packet: the net_af_packet PMD, one port with a queue pair per core.
# io forwards frames untouched; macswap swaps the Ethernet addresses.
#
# Runs in the foreground until SIGINT (testpmd then prints its totals);
# --stats-period 1 prints its counters every second. Reserves 512 2-MiB
# hugepages and mounts hugetlbfs first if that is not done yet.
set -euo pipefail
usage="usage: testpmd.sh NS IFACE xdp|packet io|macswap MAIN_CORE CORE..."
[ $# -ge 6 ] || { echo "$usage" >&2; exit 2; }
ns=$1 dev=$2 pmd=$3 mode=$4 main=$5
shift 5
cores=("$@")
queues=${#cores[@]}
command -v dpdk-testpmd >/dev/null || { echo "error: dpdk-testpmd is missing: run setup.sh first" >&2; exit 1; }

if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt 512 ]; then
	echo 512 >/proc/sys/vm/nr_hugepages
fi
mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages; }

lcores="0@$main"
for i in "${!cores[@]}"; do lcores+=",$((i + 1))@${cores[$i]}"; done
vdevs=() extra=()
case $pmd in
xdp)
	for ((q = 0; q < queues; q++)); do
		vdevs+=(--vdev "net_af_xdp$q,iface=$dev,start_queue=$q,queue_count=1")
	done
	extra=(--port-topology=loop)
	;;
packet)
	vdevs=(--vdev "net_af_packet0,iface=$dev,qpairs=$queues")
	extra=(--rxq="$queues" --txq="$queues")
	;;
*) echo "$usage" >&2; exit 2 ;;
esac
case $mode in io | macswap) ;; *) echo "$usage" >&2; exit 2 ;; esac

# One file prefix per namespace, so two runs never share DPDK's runtime files.
exec ip netns exec "$ns" stdbuf -oL dpdk-testpmd --lcores "$lcores" --no-pci --file-prefix "$ns" \
	"${vdevs[@]}" -- --forward-mode="$mode" --nb-cores="$queues" --stats-period=1 "${extra[@]}"
