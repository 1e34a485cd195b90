#!/usr/bin/env bash
# The main job, scaled out: three border nodes behind a router that runs
# BGP (testbed/fleet.sh), each node's Rialto announcing the VIPs while it
# serves and sharing its flows with the others; requests from 50 client
# addresses, which node and which pod served them; an iperf3 transfer that
# goes on while one node is drained and another killed (the others hold
# their flows and carry their connections); the router's routes. Everything
# is removed on exit or Ctrl-C.
#
#   bash testbed/fleet-demo.sh [REQUESTS]     (as root, after setup.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=$root/target/release/rialto
requests=${1:-60}
name=fd$(($$ % 10000))
work=$(mktemp -d /tmp/rialto-fleet-demo.XXXXXX)
[ -x "$bin" ] || { echo "error: $bin is missing: run setup.sh first" >&2; exit 1; }
nodes=(1 2 3)
declare -A pid=()
cleanup() {
	local i
	for i in "${!pid[@]}"; do kill -TERM "${pid[$i]}" 2>/dev/null || true; done
	for i in "${!pid[@]}"; do wait "${pid[$i]}" 2>/dev/null || true; done
	bash "$here/fleet.sh" down "$name"
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$name-$ns" "$@"; }
api() { in_ns "node$1" curl -s "http://127.0.0.1:9600/api/v1/$2"; }
created() { # NODE: flows the node has created
	api "$1" status | python3 -c 'import json, sys
print(sum(w["balance"]["flows"]["created"] for w in json.load(sys.stdin)["workers"]))'
}
routes() { bash "$here/fleet.sh" routes "$name" | sed -n '1,4p' | sed 's/^/  /'; }

echo "== building the fleet $name: a router with BIRD (AS 65000), three border nodes, clusters east and west"
bash "$here/fleet.sh" up "$name" "${#nodes[@]}"
# shellcheck source=testbed/lib.sh
. "$here/lib.sh"
for i in "${nodes[@]}"; do
	bash "$here/fleet.sh" config "$name" "$i" >"$work/node$i.toml"
	# Not through in_ns: $! must be Rialto itself (ip netns exec execs it).
	ip netns exec "$name-node$i" "$bin" run --iface up0 --config "$work/node$i.toml" \
		--drain-seconds 10 --state-dir "$(state_dir "$name-node$i")" \
		>"$work/node$i.json" 2>"$work/node$i.log" &
	pid[$i]=$!
done
echo
echo "== the router's route to the VIPs, once every node announces them (BGP, BFD)"
for _ in $(seq 200); do
	[ "$(ip -n "$name-router" route show 198.18.100.1 | grep -c nexthop)" -eq 3 ] && break
	sleep 0.1
done
routes

echo
echo "== $requests HTTP requests to http://198.18.100.1/ from 50 client addresses"
declare -A before=()
for i in "${nodes[@]}"; do before[$i]=$(created "$i"); done
for r in $(seq 0 $((requests - 1))); do
	in_ns client curl -s --max-time 3 --interface "198.18.0.$((10 + r % 50))" http://198.18.100.1/ ||
		echo "(no answer)"
done | sort | uniq -c | sed 's/^/  /'
for i in "${nodes[@]}"; do
	echo "  node $i served $(($(created "$i") - before[$i])) of them"
done
digests=$(for i in "${nodes[@]}"; do api "$i" services | python3 -c 'import json, sys
print(json.load(sys.stdin)[0]["maglev_digest"])'; done | sort -u)
echo "  the web service's Maglev table on every node: $(echo "$digests" | tr '\n' ' ')"

echo
echo "== an iperf3 transfer through 198.18.100.2 (8 streams, 6 s) while node 1 drains and node 2 is killed"
# Bounded, should a connection hang.
in_ns client timeout 15 iperf3 -c 198.18.100.2 -P 8 -t 6 -b 20M -J >"$work/iperf3.json" 2>&1 &
iperf=$!
sleep 2
echo "-- node 1: rialto drain"
in_ns node1 "$bin" drain | sed 's/^/  /'
sleep 0.5
routes
sleep 1
echo "-- node 2: kill -9"
kill -9 "${pid[2]}"
wait "${pid[2]}" 2>/dev/null || true
unset 'pid[2]'
sleep 0.5
routes
wait "$iperf" || true
python3 - "$work/iperf3.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except ValueError:
    print("  iperf3 did not finish within 15 s")
    sys.exit()
if "error" in r:
    print(f"  iperf3: {r['error']}")
else:
    s = r["end"]["sum_received"]
    last = r["intervals"][-1]["streams"]
    stalled = sum(1 for st in last if st["bytes"] == 0)
    print(f"  iperf3: {s['bytes'] / 2**20:.0f} MiB received, {s['bits_per_second'] / 1e6:.0f} Mbit/s;"
          f" in its last second {stalled} of {len(last)} streams moved nothing")
PY
echo "-- node 3's view of the fleet (rialto stats)"
in_ns node3 "$bin" stats --count 1 2>/dev/null | grep '^fleet' | sed 's/^/  /' || true
echo
echo "== node 1's drain: it stops once the router has taken it out (its peers hold its flows)"
wait "${pid[1]}" || true
unset 'pid[1]'
grep -E "withdrawn|drained" "$work/node1.log" | sed -E 's/^[^ ]+ +[A-Z]+ [^ ]+ /  /'
echo
echo "== the router's route now: node 3 alone"
routes
echo "== node 3 still serves"
for r in $(seq 0 9); do
	in_ns client curl -s --max-time 3 --interface "198.18.0.$((10 + r))" http://198.18.100.1/ ||
		echo "(no answer)"
done | sort | uniq -c | sed 's/^/  /'
