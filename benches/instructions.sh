#!/usr/bin/env bash
# Instructions per packet of the pipeline's paths, under callgrind: stable
# where wall-clock time is not.
#
#   bash benches/instructions.sh [FLOWS]        (after setup.sh; valgrind)
#
# Each path runs twice under `valgrind --tool=callgrind`, with 20,000 and
# 120,000 packets after the same set-up (FLOWS live flows, default 100,000);
# the difference in instructions, divided by 100,000, is the cost of one
# packet, the frame's copy into place included:
#   reflect  the bare baseline; forward / return  a packet of a live flow
#            (the fast path), the same by the general path alone, and by
#            the fast path 64 frames per call (their flows read ahead);
#   new      a SYN that creates a flow (Maglev, SNAT port, both entries).
set -euo pipefail
cd "$(dirname "$0")/.."
flows=${1:-100000}
command -v valgrind >/dev/null || { echo "error: valgrind is missing: run setup.sh first" >&2; exit 1; }
cargo build --release --quiet -p rialto-benches --bin instructions
bin=target/release/instructions
count() {
	valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$flows" "$2" 2>&1 |
		awk '/Collected :/ { print $NF }'
}
printf '%-16s %14s\n' path instructions/packet
for path in reflect forward forward-general forward-batch return return-general return-batch new; do
	low=$(count "$path" 20000)
	high=$(count "$path" 120000)
	awk -v p="$path" -v a="$low" -v b="$high" 'BEGIN { printf "%-16s %14.1f\n", p, (b - a) / 100000 }'
done
echo "($flows live flows; callgrind counts instructions executed, not cycles)"
