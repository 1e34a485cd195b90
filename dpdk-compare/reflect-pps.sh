#!/usr/bin/env bash
# Reflect mode's packets/s on the veth testbed, with DPDK's testpmd as the generator.
#
#   dpdk-compare/reflect-pps.sh [SECONDS]     (as root, after setup.sh)
#
# One queue: testpmd's net_af_xdp sizes itself by the device's combined
# channels, and a veth has none to offer beyond one.
#
# dpdk-testpmd --forward-mode=txonly over the net_af_xdp PMD in the peer namespace
# sends 64-byte UDP frames 198.18.0.2:9 -> 198.18.100.1:7 to the node; Rialto, in
# reflect mode, sends each one back. Printed: Rialto's transmitted packets/s per
# second of the run (summed over queues), their median, and testpmd's own totals.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
seconds=${1:-10}
queues=1
name=pps$$
bin=$root/target/release/rialto
[ -x "$bin" ] || { echo "error: $bin is missing: run setup.sh first" >&2; exit 1; }
command -v dpdk-testpmd >/dev/null || { echo "error: dpdk-testpmd is missing: run setup.sh first" >&2; exit 1; }

log=$(mktemp) pmdlog=$(mktemp) summary=$(mktemp)
pid=
cleanup() {
	[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
	bash "$root/testbed/pair.sh" down "$name"
	rm -f "$log" "$pmdlog" "$summary"
}
trap cleanup EXIT INT TERM

bash "$root/testbed/pair.sh" up "$name" "$queues"
node_mac=$(cat "/sys/class/net/${name}n/address" 2>/dev/null || ip netns exec "$name-node" cat "/sys/class/net/${name}n/address")

ip netns exec "$name-node" "$bin" run --mode reflect --iface "${name}n" --vip 198.18.100.1:7/UDP \
	--stats-interval 1 >"$summary" 2>"$log" &
pid=$!
sleep 1

timeout -s INT "$((seconds + 2))" ip netns exec "$name-peer" dpdk-testpmd -l 0,1 --no-pci \
	--file-prefix "$name" \
	--vdev "net_af_xdp0,iface=${name}p,start_queue=0,queue_count=$queues" -- \
	--forward-mode=txonly --txq="$queues" --rxq="$queues" --nb-cores=1 \
	--tx-ip=198.18.0.2,198.18.100.1 --tx-udp=9,7 --eth-peer="0,$node_mac" \
	--txpkts=64 --stats-period=1 >"$pmdlog" 2>&1 || true

kill -TERM "$pid"
wait "$pid" || true
pid=

if ! grep -q "TX-packets" "$pmdlog"; then
	echo "error: dpdk-testpmd did not run:" >&2
	cat "$pmdlog" >&2
	exit 1
fi
echo "generator: dpdk-testpmd --forward-mode=txonly over net_af_xdp, 64-byte UDP, $queues queue(s)"
grep -E "TX-packets" "$pmdlog" | tail -1 | sed 's/^ */testpmd total: /'
python3 - "$summary" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
w = s["workers"]
print("rialto totals: XDP redirected %d, workers received %d, transmitted %d, dropped %d"
      % (s["xdp"]["redirect_vip"]["packets"], sum(x["rx_packets"] for x in w),
         sum(x["tx_packets"] for x in w), sum(sum(x["drops"].values()) for x in w)))
PY
# Per-second rates summed over queues, in time order; the first and last
# seconds are partial and left out.
awk '/ rates / {
		sec = substr($1, 1, 19)
		if (!(sec in sum)) order[++n] = sec
		for (i = 1; i <= NF; i++) if ($i ~ /^tx_pps=/) { split($i, kv, "="); sum[sec] += kv[2] }
	}
	END { for (i = 2; i < n; i++) print sum[order[i]] }' "$log" >"$log.rates"
echo "rialto tx packets/s, one-second samples: $(tr '\n' ' ' <"$log.rates")"
sort -n "$log.rates" | awk '{ v[NR] = $1 } END {
	if (NR) printf "rialto reflect: median %d packets/s over %d samples\n", v[int((NR + 1) / 2)], NR
	else print "rialto reflect: no samples" }'
rm -f "$log.rates"
