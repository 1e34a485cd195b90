#!/usr/bin/env bash
# The main job: the cross-cluster testbed (testbed/topology.sh: a router, a
# client, Rialto's border node, two clusters behind kernel VXLAN gateways with
# the same pod addresses), Rialto balancing a VIP over the pods of both
# clusters, requests from the client, which pods in which clusters answered,
# an iperf3 transfer, Rialto's live stats and its exit summary. Everything is
# removed on exit or Ctrl-C.
#
#   bash testbed/demo.sh [REQUESTS]     (as root, after setup.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=$root/target/release/rialto
requests=${1:-40}
name=demo$(($$ % 10000))
work=$(mktemp -d /tmp/rialto-demo.XXXXXX)
[ -x "$bin" ] || { echo "error: $bin is missing: run setup.sh first" >&2; exit 1; }

pid=
cleanup() {
	if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null && wait "$pid" || true; fi
	bash "$here/topology.sh" down "$name"
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local ns=$1; shift; ip netns exec "$name-$ns" "$@"; }

echo "== building the testbed $name (router, client, border node, clusters east and west)"
bash "$here/topology.sh" up "$name" 2
bash "$here/topology.sh" config "$name" >"$work/border.toml"
"$bin" check "$work/border.toml"

# shellcheck source=testbed/lib.sh
. "$here/lib.sh"
ip netns exec "$name-border" "$bin" run --iface up0 --config "$work/border.toml" \
	--state-dir "$(state_dir "$name-border")" >"$work/summary.json" 2>"$work/rialto.log" &
pid=$!
for _ in $(seq 100); do
	in_ns border curl -sf -o /dev/null http://127.0.0.1:9600/api/v1/status && break
	kill -0 "$pid" 2>/dev/null || { cat "$work/rialto.log" >&2; exit 1; }
	sleep 0.1
done

echo
echo "== $requests HTTP requests from the client to the VIP http://198.18.100.1/"
for _ in $(seq "$requests"); do
	in_ns client curl -s --max-time 3 http://198.18.100.1/ || echo "(no answer)"
done | sort | uniq -c | sed 's/^/  /'

echo
echo "== a pod's server stops (east p1): its health checks fail, new requests go elsewhere"
bash "$here/topology.sh" http "$name" east-p1 stop
sleep 2
in_ns border "$bin" stats --count 1 --interval 0.5 | sed -n '/backends down/,$p' | sed 's/^/  /'
for _ in $(seq "$requests"); do
	in_ns client curl -s --max-time 3 http://198.18.100.1/ || echo "(no answer)"
done | sort | uniq -c | sed 's/^/  /'
echo "== and starts again: it serves again"
bash "$here/topology.sh" http "$name" east-p1 start
sleep 2
grep -E "backend (down|up)" "$work/rialto.log" | sed -E 's/^[^ ]+ +[A-Z]+ [^ ]+ /  /'
for _ in $(seq "$requests"); do
	in_ns client curl -s --max-time 3 http://198.18.100.1/ || echo "(no answer)"
done | sort | uniq -c | sed 's/^/  /'

echo
echo "== iperf3 from the client through the VIP 198.18.100.2:5201 (4 seconds), and"
echo "== Rialto's live view meanwhile (rialto stats, two one-second views)"
in_ns client iperf3 -c 198.18.100.2 -t 4 -f m >"$work/iperf3.txt" &
iperf=$!
sleep 1
in_ns border "$bin" stats --count 2 --interval 1 | sed 's/^/  /'
wait "$iperf"
grep -E "sender|receiver" "$work/iperf3.txt" | sed 's/^/  /'

echo
echo "== an upgrade under traffic: a new Rialto takes over (rialto run --take-over, as"
echo "== systemctl kill -s USR2 would start it) while iperf3 sends 1,000 datagrams a second"
in_ns client iperf3 -c 198.18.100.2 -u -b 1M -l 125 -t 3 -J >"$work/udp.json" &
iperf=$!
sleep 1
ip netns exec "$name-border" "$bin" run --iface up0 --config "$work/border.toml" \
	--state-dir "$(state_dir "$name-border")" --take-over >"$work/summary-new.json" \
	2>"$work/rialto-new.log" &
new=$!
wait "$pid" || true
pid=$new
grep -E "let go|took over" "$work/rialto-new.log" | sed -E 's/^[^ ]+ +INFO [^ ]+ /  /'
wait "$iperf"
python3 - "$work/udp.json" <<'PY'
import json, sys
end = json.load(open(sys.argv[1]))["end"]["sum"]
lost, sent = end["lost_packets"], end["packets"]
print(f"  iperf3 UDP: {sent} datagrams, {lost} lost: a gap of about {lost} ms at 1,000 a second")
PY

kill -TERM "$pid"
wait "$pid" || true
pid=
echo
echo "== Rialto's exit summary (the one that took over)"
python3 - "$work/summary-new.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
xdp = {k: v["packets"] for k, v in s["xdp"].items() if v["packets"]}
print(f"  XDP program: {xdp}")
for w in s["workers"]:
    b = w.get("balance", {})
    drops = {k: v for k, v in w["drops"].items() if v}
    print(f"  queue {w['queue']}: rx {w['rx_packets']} tx {w['tx_packets']} "
          f"forward {b.get('forward')} reply {b.get('reply')} "
          f"flows created {b.get('flows', {}).get('created')} "
          f"handoff out {w['handoff_out']} in {w['handoff_in']} drops {drops or 'none'} "
          f"UMEM balanced {w['umem_balanced']}")
PY
