#!/usr/bin/env bash
# What health checks cost: BACKENDS backends (default 1,000), each checked
# over TCP every INTERVAL_MS (default 1,000), on the cross-cluster testbed.
# The backends are ports 20000 and up of east's and west's pod 1, which the
# pods' nftables redirect to one listening port, so every check is a whole
# TCP handshake through the tunnel. After the checks have run for a while,
# the CPU the checker thread, the workers and the whole process spent over
# SECONDS (default 20) is read from /proc, as a share of one core.
#
#   bash benches/checks.sh [BACKENDS] [INTERVAL_MS] [SECONDS]   (as root, after setup.sh)
#
# With PERF=FILE, `perf record` samples the checker thread for 5 s into FILE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=$root/target/release/rialto
backends=${1:-1000}
interval=${2:-1000}
seconds=${3:-20}
name=chk$(($$ % 10000))
work=$(mktemp -d /tmp/rialto-checks.XXXXXX)
[ -x "$bin" ] || { echo "error: $bin is missing: run setup.sh first" >&2; exit 1; }
pid=
cleanup() {
	if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null && wait "$pid" || true; fi
	bash "$root/testbed/topology.sh" down "$name"
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash "$root/testbed/topology.sh" up "$name" 2 >/dev/null
# Every port from 20000 on reaches the pod's iperf3 server, which listens.
for c in east west; do
	ip netns exec "$name-$c-p1" nft -f - <<EOF
table ip checks {
	chain prerouting {
		type nat hook prerouting priority dstnat;
		tcp dport 20000-29999 redirect to :5201
	}
}
EOF
done
{
	bash "$root/testbed/topology.sh" config "$name" | sed '/^\[\[service\]\]/,$d'
	echo '[[service]]'
	echo 'name = "checked"'
	echo 'vip = "198.18.100.9:80/TCP"'
	echo "check = { kind = \"tcp\", interval_ms = $interval, timeout_ms = $((interval / 2)) }"
	echo 'backends = ['
	for i in $(seq 0 $((backends - 1))); do
		c=$([ $((i % 2)) -eq 0 ] && echo east || echo west)
		echo "    { cluster = \"$c\", addr = \"198.19.0.10:$((20000 + i / 2))\" },"
	done
	echo ']'
} >"$work/border.toml"
"$bin" check "$work/border.toml" >/dev/null

. "$root/testbed/lib.sh"
ip netns exec "$name-border" "$bin" run --iface up0 --config "$work/border.toml" \
	--state-dir "$(state_dir "$name-border")" >/dev/null 2>"$work/rialto.log" &
pid=$!
for _ in $(seq 100); do
	ip netns exec "$name-border" curl -sf -o /dev/null http://127.0.0.1:9600/api/v1/status && break
	sleep 0.1
done
# Every backend checked once at least, then a moment to settle.
sleep $((interval * 3 / 1000 + 2))

ticks() { # TASK-STAT-FILE...: utime + stime, in clock ticks
	cat "$@" 2>/dev/null | awk '{ sub(/.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}
task() { # NAME: the stat files of the process's threads of that name
	for t in /proc/"$pid"/task/*; do
		if [ "$(cat "$t/comm")" = "$1" ]; then echo "$t/stat"; fi
	done
}
checker=$(task rialto-checks)
workers=$(task rialto-q0; task rialto-q1)
services() { ip netns exec "$name-border" curl -s http://127.0.0.1:9600/api/v1/services; }
counts() { # checks done, and backends up
	services | python3 -c '
import json, sys
b = [b for s in json.load(sys.stdin) for b in s["backends"] if "health" in b]
print(sum(x["health"]["checks"] for x in b), sum(1 for x in b if x["health"]["up"]))'
}
read -r checks0 _ < <(counts)
c0=$(ticks $checker); w0=$(ticks $workers); p0=$(ticks /proc/"$pid"/stat)
sleep "$seconds" &
sleeping=$!
if [ -n "${PERF:-}" ]; then
	perf record -F 999 -g -t "$(basename "$(dirname "$checker")")" -o "$PERF" -- sleep 5 >/dev/null 2>&1
fi
wait $sleeping
c1=$(ticks $checker); w1=$(ticks $workers); p1=$(ticks /proc/"$pid"/stat)
read -r checks1 up < <(counts)
hz=$(getconf CLK_TCK)
awk -v b="$backends" -v i="$interval" -v s="$seconds" -v hz="$hz" -v up="$up" \
	-v n=$((checks1 - checks0)) -v c=$((c1 - c0)) -v w=$((w1 - w0)) -v p=$((p1 - p0)) 'BEGIN {
	printf "%d backends checked over TCP every %d ms, for %d s: %d checks (%.0f/s), %d backends up\n",
		b, i, s, n, n / s, up
	printf "CPU, as a share of one core: checker thread %.2f%%, workers %.2f%%, whole process %.2f%%\n",
		100 * c / hz / s, 100 * w / hz / s, 100 * p / hz / s
	printf "per check: %.1f us of the checker, %.1f us of the process\n",
		1e6 * c / hz / n, 1e6 * p / hz / n
}'
